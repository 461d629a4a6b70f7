"""What a version was built from and what was built from it (``python -m store lineage``).

Upstream comes from manifests: a version's own, then its parents' (in the order of their
roles), so it reads only the versions it prints. Downstream needs every version's parents:
they come from the catalog index (:mod:`store.published`, checked against a listing of
each dataset), not from every manifest; with ``use_index=False`` every manifest is read,
as before the index existed.
"""
from __future__ import annotations

from dataclasses import dataclass

from .core import Store
from .errors import StoreError
from .manifest import Manifest
from .published import Published


@dataclass(frozen=True)
class Node:
    """One version in a lineage walk."""

    ref: str  # name@version
    kind: str


class Lineage:
    """Parents and children of the versions in one store, for one walk."""

    def __init__(self, store: Store, use_index: bool = True) -> None:
        self.store = store
        self.published = Published(store, use_index)
        self._manifests: dict[str, Manifest] = {}
        self._children: dict[str, list[Node]] | None = None

    def resolve(self, ref: str) -> Node:
        """``name`` (latest) or ``name@<version id or unique prefix>``."""
        entry = self.published.resolve(ref)
        return Node(f"{entry['dataset']}@{entry['version']}", entry["kind"])

    def _manifest(self, ref: str) -> Manifest:
        if ref not in self._manifests:
            name, _, version = ref.partition("@")
            manifest = self.store.read_manifest(name, version)
            if manifest is None:
                raise StoreError(f"{ref} is not published in {self.store.location.url}")
            self._manifests[ref] = manifest
        return self._manifests[ref]

    def parents(self, node: Node) -> list[Node]:
        """The versions ``node`` was built from that are in this store."""
        found = self.store.parents(self._manifest(node.ref))
        self._manifests.update((m.ref, m) for m in found)  # each is read once, when walked
        return [Node(m.ref, m.kind) for m in found]

    def children(self, node: Node) -> list[Node]:
        """The versions built from ``node`` (datasets by name, versions oldest first)."""
        if self._children is None:
            self._children = {}
            for name in self.published.names():
                versions, _ = self.published.dataset(name)
                for entry in versions.values():
                    child = Node(f"{name}@{entry['version']}", entry["kind"])
                    for parent in set(entry["parents"]):  # two roles, one parent: one child
                        self._children.setdefault(parent, []).append(child)
        return self._children.get(node.ref, [])

    def save_repairs(self) -> None:
        """Fold the versions the index lacked into it (see :meth:`Published.save_repairs`)."""
        self.published.save_repairs()
