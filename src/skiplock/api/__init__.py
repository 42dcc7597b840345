"""The status API (Starlette): create, follow and cancel jobs over HTTP."""

__all__: list[str] = []
