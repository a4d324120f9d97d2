"""The caller as core's and auth's endpoints see it: a principal, a person, a signed-in person.

The plumbing (kit/deps.py) authenticates with whatever the app hands it; these annotations give
the result the type this domain defines (``Principal``, ``Person``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from aihub.core.rbac.service import Person, Principal
from aihub.kit.deps import current_principal
from aihub.kit.errors import Forbidden
from aihub.kit.openapi import raises

CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


@raises(Forbidden)
async def current_user(principal: CurrentPrincipal) -> Person:
    """Endpoints about "me" need a person, not a service token."""
    if not isinstance(principal, Person):
        raise Forbidden("This endpoint needs a user token")
    return principal


CurrentUser = Annotated[Person, Depends(current_user)]


async def session_user(principal: CurrentUser) -> Person:
    """A person signed in with an access token: an API key cannot log out a session (it has
    none) or mint service tokens."""
    if principal.api_key is not None:
        raise Forbidden("This endpoint needs a user access token, not an API key")
    return principal


SessionUser = Annotated[Person, Depends(session_user)]
