"""The embedded tiny text-to-image model: its procedurally drawn data, pixel judge and training command."""
