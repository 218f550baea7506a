"""`BrokerClient`: the agency side's HTTP client (base dependencies only: no server stack)."""

from __future__ import annotations

from typing import Any

import httpx2

from broker.ids import whole_number


class BrokerAPIError(Exception):
    """The broker refused a request; `problem` is its RFC 9457 body with a stable `code`."""

    # Seconds from the answer's `Retry-After` (ASCII digits only), e.g. on 429 and 503.
    retry_after: int | None = None

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.code: str = str(problem.get("code", f"http.{status}"))
        super().__init__(f"{status} {self.code}: {problem.get('detail', '')}")


class BadToken(ValueError):
    """The token is empty, or holds what no token has (a space, a line break, non-ASCII): told
    before any request, not as an illegal HTTP header."""


def check_token(token: str) -> str:
    """`token` if it can be a bearer token, else `BadToken`."""
    if not token:
        raise BadToken("the API token is empty: pass a token (brk_...)")
    if not token.isascii() or not token.isprintable() or " " in token:
        raise BadToken("the API token holds spaces or characters no token has")
    return token


class BrokerClient:
    """Typed calls to the broker's v1 API with a bearer token."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 30.0,
        transport: httpx2.BaseTransport | None = None,
    ) -> None:
        self._http = httpx2.Client(
            base_url=base_url.rstrip("/"),
            headers={
                "Authorization": f"Bearer {check_token(token)}",
                "User-Agent": "exchange-broker-sdk/1",
            },
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> BrokerClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"detail": response.text[:200]}
            error = BrokerAPIError(
                response.status_code, problem if isinstance(problem, dict) else {}
            )
            error.retry_after = whole_number(response.headers.get("retry-after", "").strip())
            raise error
        if response.headers.get("content-type", "").startswith("text/"):
            return response.text
        return response.json() if response.content else None

    def me(self) -> dict[str, Any]:
        """Who the token belongs to."""
        result: dict[str, Any] = self._call("GET", "/v1/me")
        return result

    def jwks(self, agency: str | None = None) -> list[dict[str, Any]]:
        """Directory keys with status and validity metadata."""
        params = {"agency": agency} if agency else None
        return list(self._call("GET", "/v1/directory/jwks", params=params)["keys"])

    def agreements(self) -> list[dict[str, Any]]:
        """What the caller's agency may send to whom."""
        return list(self._call("GET", "/v1/agreements"))

    def check(self, routing: dict[str, Any]) -> dict[str, Any]:
        """Dry-run the scope decision for a routing header."""
        result: dict[str, Any] = self._call("POST", "/v1/messages:check", json={"routing": routing})
        return result

    def submit(self, envelope: str, mid: str) -> dict[str, Any]:
        """Submit an envelope with `Idempotency-Key: <mid>`; safe to retry."""
        result: dict[str, Any] = self._call(
            "POST", "/v1/messages", json={"envelope": envelope}, headers={"Idempotency-Key": mid}
        )
        return result

    def status(self, mid: str) -> dict[str, Any]:
        """Delivery and acknowledgement state of a message we sent."""
        result: dict[str, Any] = self._call("GET", f"/v1/messages/{mid}")
        return result

    def inbox(
        self, after: str | None = None, *, limit: int = 100, wait: float = 0
    ) -> dict[str, Any]:
        """One page of our inbox after the cursor; `wait` long-polls."""
        params: dict[str, Any] = {"limit": limit, "wait": wait}
        if after:
            params["after"] = after
        result: dict[str, Any] = self._call("GET", "/v1/inbox", params=params, timeout=wait + 30)
        return result

    def ack(self, mid: str, ack_jws: str) -> dict[str, Any]:
        """Post our signed acknowledgement."""
        result: dict[str, Any] = self._call("POST", f"/v1/inbox/{mid}/ack", json={"ack": ack_jws})
        return result

    def recall(self, mid: str, recall_jws: str) -> dict[str, Any]:
        """Recall a message we sent with our focal point's signed `recall+jws` (a second recall
        answers with the first one's result)."""
        result: dict[str, Any] = self._call(
            "POST", f"/v1/messages/{mid}/recall", json={"recall": recall_jws}
        )
        return result

    def comply(self, mid: str, compliance_jws: str) -> dict[str, Any]:
        """Post our signed `recall-compliance+jws` answering the recall of message `mid`."""
        result: dict[str, Any] = self._call(
            "POST", f"/v1/inbox/{mid}/compliance", json={"compliance": compliance_jws}
        )
        return result

    def agreement_proposals(self, agreement: str) -> list[dict[str, Any]]:
        """A registrar's view of the proposed changes to `agreement`, with their approvals."""
        return list(self._call("GET", f"/v1/agreements/{agreement}/proposals"))

    def propose_agreement_change(self, agreement: str, document: dict[str, Any]) -> dict[str, Any]:
        """Propose a new version of `agreement` (the full document) to its parties."""
        result: dict[str, Any] = self._call(
            "POST", f"/v1/agreements/{agreement}/proposals", json=document
        )
        return result

    def approve_agreement_change(
        self, agreement: str, proposal: str, approval_jws: str
    ) -> dict[str, Any]:
        """Post our agency's signed `agreement-approval+jws` of a proposal (idempotent)."""
        result: dict[str, Any] = self._call(
            "POST",
            f"/v1/agreements/{agreement}/proposals/{proposal}/approvals",
            json={"approval": approval_jws},
        )
        return result

    def restrict_agreement(self, agreement: str, restriction: dict[str, Any]) -> dict[str, Any]:
        """Narrow `agreement` at once for our agency (suspend, or exclude offences we send)."""
        result: dict[str, Any] = self._call(
            "POST", f"/v1/agreements/{agreement}/restrictions", json=restriction
        )
        return result

    def get(self, path: str, **params: Any) -> Any:
        """Any other GET (log checkpoints and proofs, audit queries)."""
        return self._call("GET", path, params=params or None)

    def post(self, path: str, body: Any = None) -> Any:
        """Any other POST: the registry routes an agency's registrar shares with the operator
        (docs/registrars.md), with the route's JSON body."""
        return self._call("POST", path, json=body)

    def suspend_focal_point(self, focal_point: str, reason: str) -> dict[str, Any]:
        """A registrar suspends one of its agency's focal points (`AGENCY/slug`): its tokens are
        refused until it is reactivated."""
        result: dict[str, Any] = self.post(
            f"/v1/admin/focal-points/{focal_point}/suspend", {"reason": reason}
        )
        return result

    def reactivate_focal_point(self, focal_point: str, reason: str) -> dict[str, Any]:
        """Put a suspended focal point back in service (its tokens work again)."""
        result: dict[str, Any] = self.post(
            f"/v1/admin/focal-points/{focal_point}/reactivate", {"reason": reason}
        )
        return result
