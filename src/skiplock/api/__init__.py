"""The status API (Starlette): create, follow and cancel jobs over HTTP."""

from skiplock._extras import require

require("api")  # names the extra to install, before the imports that need it

from skiplock.api.app import create_app
from skiplock.api.auth import Principal, create_api_key, sign_share_token, verify_share_token
from skiplock.api.settings import ApiSettings, ExposedTask
from skiplock.queue.hub import EventHub

__all__ = [
    "ApiSettings",
    "EventHub",
    "ExposedTask",
    "Principal",
    "create_api_key",
    "create_app",
    "sign_share_token",
    "verify_share_token",
]
