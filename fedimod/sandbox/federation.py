"""Federation: admin domain blocks (list with `Link` paging, create with Mastodon's normalisation,
stricter-than conflict and severity check, update, delete), the public list (gated by
`show_domain_blocks`, obfuscated domains with their digest), the instance's peers, and the
`instance_follows` measure that says whether local accounts follow anyone on a domain.

Shapes and rules as in Mastodon's `api/v1/admin/domain_blocks_controller.rb`, `domain_block.rb`
(`rule_for`, `stricter_than?`), `ObfuscatedDomainPresenter`, `instances/domain_blocks_controller.rb`
and `admin/metrics/measure/instance_follows_measure.rb`.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from dataclasses import dataclass

import idna
from aiohttp import web

from fedimod.sandbox.base import ApiError, SandboxBase, _bool
from fedimod.sandbox.state import iso
from fedimod.sandbox.wire import _limit, _link, _paginate

SEVERITIES = ("noop", "silence", "suspend")


@dataclass(slots=True)
class SandboxDomainBlock:
    id: int
    domain: str
    severity: str = "silence"
    reject_media: bool = False
    reject_reports: bool = False
    private_comment: str | None = None
    public_comment: str | None = None
    obfuscate: bool = False
    created_at: float = 0.0

    def stricter_than(self, other: SandboxDomainBlock) -> bool:
        if self.severity == "suspend":
            return True
        if other.severity == "suspend":
            return False
        if other.severity == "silence" and self.severity == "noop":
            return False
        return (self.reject_media or not other.reject_media) and (self.reject_reports or not other.reject_reports)

    def json(self) -> dict[str, object]:
        return {"id": str(self.id), "domain": self.domain, "digest": hashlib.sha256(self.domain.encode()).hexdigest(),
                "created_at": iso(self.created_at), "severity": self.severity, "reject_media": self.reject_media,
                "reject_reports": self.reject_reports, "private_comment": self.private_comment,
                "public_comment": self.public_comment, "obfuscate": self.obfuscate}


def normalized_host(raw: str) -> str:
    """What Mastodon stores: stripped, a trailing `/` dropped, lower case, IDN as punycode."""
    text = raw.strip().rstrip("/").lower()
    if not text or " " in text or "/" in text:
        raise ApiError(422, "Validation failed: Domain is invalid")
    try:
        return idna.encode(text, uts46=True).decode("ascii")
    except idna.IDNAError:
        raise ApiError(422, "Validation failed: Domain is invalid") from None


def obfuscated(domain: str) -> str:
    """Mastodon's ObfuscatedDomainPresenter: the middle of the name starred, dots kept."""
    edge = len(domain) // 4
    return "".join("*" if edge < i < len(domain) - edge and c != "." else c for i, c in enumerate(domain))


class FederationMixin(SandboxBase):
    domain_blocks: dict[int, SandboxDomainBlock]
    peers: set[str]
    follows_by_domain: dict[str, int]
    show_domain_blocks: str
    _block_ids: itertools.count[int]

    def _federation_state(self) -> None:
        self.domain_blocks = {}
        self.peers = set()
        self.follows_by_domain = {}  # domain → follows of its accounts by local ones (instance_follows)
        self.show_domain_blocks = "disabled"  # Mastodon's default: the public list answers 404
        self._block_ids = itertools.count(1)

    def block_domain(self, domain: str, severity: str = "suspend", **fields: object) -> SandboxDomainBlock:
        """A block an admin made by hand (test control)."""
        block = SandboxDomainBlock(id=next(self._block_ids), domain=normalized_host(domain), severity=severity,
                                   created_at=time.time(), **fields)  # type: ignore[arg-type]
        self.domain_blocks[block.id] = block
        return block

    def _rule_for(self, domain: str) -> SandboxDomainBlock | None:
        """The most specific block among the domain and its parent domains."""
        by_domain = {b.domain: b for b in self.domain_blocks.values()}
        parts = domain.split(".")
        for i in range(len(parts)):
            found = by_domain.get(".".join(parts[i:]))
            if found is not None:
                return found
        return None

    async def _admin_domain_blocks(self, request: web.Request) -> web.StreamResponse:
        self._admin(request, "admin:read:domain_blocks", "manage_federation")
        limit = _limit(request.query.get("limit"), default=100, maximum=500)
        page = _paginate(list(self.domain_blocks.values()), request.query, limit)
        response = web.json_response([b.json() for b in page])
        _link(response, request, page, full_only_next=True, limit=limit)
        return response

    async def _admin_domain_block(self, request: web.Request) -> web.StreamResponse:
        self._admin(request, "admin:read:domain_blocks", "manage_federation")
        return web.json_response(self._block(request.match_info["id"]).json())

    def _block(self, raw_id: str) -> SandboxDomainBlock:
        block = self.domain_blocks.get(int(raw_id)) if raw_id.isdigit() else None
        if block is None:
            raise ApiError(404, "Record not found")
        return block

    async def _admin_create_domain_block(self, request: web.Request) -> web.StreamResponse:
        self._admin(request, "admin:write:domain_blocks", "manage_federation")
        params = await self._params(request)
        if not params.get("domain"):
            raise ApiError(400, "param is missing or the value is empty: domain")
        block = SandboxDomainBlock(id=0, domain=normalized_host(str(params["domain"])), created_at=time.time())
        self._apply_fields(block, params)
        existing = self._rule_for(block.domain)
        if existing is not None and (existing.domain == block.domain or not block.stricter_than(existing)):
            raise ApiError(422, f"You have already imposed stricter limits on {existing.domain}.",
                           existing_domain_block=existing.json())
        block.id = next(self._block_ids)
        self.domain_blocks[block.id] = block
        return web.json_response(block.json())

    async def _admin_update_domain_block(self, request: web.Request) -> web.StreamResponse:
        self._admin(request, "admin:write:domain_blocks", "manage_federation")
        block = self._block(request.match_info["id"])
        self._apply_fields(block, await self._params(request))  # `domain` is not updatable: ignored
        return web.json_response(block.json())

    async def _admin_delete_domain_block(self, request: web.Request) -> web.StreamResponse:
        self._admin(request, "admin:write:domain_blocks", "manage_federation")
        del self.domain_blocks[self._block(request.match_info["id"]).id]
        return web.json_response({})

    @staticmethod
    def _apply_fields(block: SandboxDomainBlock, params: object) -> None:
        get = params.get  # type: ignore[attr-defined]
        if get("severity") is not None:
            if get("severity") not in SEVERITIES:
                raise ApiError(422, "Validation failed: Severity is not included in the list")
            block.severity = str(get("severity"))
        for name in ("reject_media", "reject_reports", "obfuscate"):
            if get(name) is not None:
                setattr(block, name, _bool(str(get(name))))
        for name in ("private_comment", "public_comment"):
            if get(name) is not None:
                setattr(block, name, str(get(name)) or None)

    async def _instance_domain_blocks(self, request: web.Request) -> web.StreamResponse:
        if self.show_domain_blocks != "all" and not (self.show_domain_blocks == "users"
                                                     and self._token(request) is not None):
            return web.Response(status=404)
        shown = sorted((b for b in self.domain_blocks.values() if b.severity in ("silence", "suspend")),
                       key=lambda b: (SEVERITIES.index(b.severity), b.domain))
        return web.json_response([{
            "domain": obfuscated(b.domain) if b.obfuscate else b.domain,
            "digest": hashlib.sha256(b.domain.encode()).hexdigest(), "severity": b.severity,
            "comment": b.public_comment} for b in shown])

    async def _instance_peers(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(sorted(self.peers))

    async def _admin_measures(self, request: web.Request) -> web.StreamResponse:
        self._admin(request, "admin:read", "view_dashboard")
        params = await self._params(request)
        keys = params.getall("keys[]", [])
        if not params.get("start_at") or not params.get("end_at"):
            raise ApiError(400, "param is missing or the value is empty: start_at")
        out = []
        for key in keys:
            if key == "instance_follows":
                nested = params.get("instance_follows")  # JSON: {"instance_follows": {"domain": …}}
                domain = str(nested.get("domain", "") if isinstance(nested, dict)
                             else params.get("instance_follows[domain]", ""))
                total = self.follows_by_domain.get(domain, 0)
                out.append({"key": key, "unit": None, "total": str(total), "previous_total": None, "data": []})
        return web.json_response(out)
