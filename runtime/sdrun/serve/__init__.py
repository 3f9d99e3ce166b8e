"""`sdrun serve`: the library behind the HTTP APIs that image clients already speak.

- OpenAI Images (`/v1/images/generations`, `/v1/images/edits`, `/v1/models`): sdrun.serve.openai_api
- AUTOMATIC1111 (`/sdapi/v1/...`): sdrun.serve.a1111_api

Both are thin adapters: they translate a typed request (sdrun.serve.schemas) into `Pipeline.generate_each`
keyword arguments and run it through one bounded queue per model (sdrun.serve.jobs). Needs the `serve`
extra (FastAPI, uvicorn); docs/api.md lists every route.
"""
