"""MeshTier: placeholder until its issue lands."""

from __future__ import annotations

import pulumi

from components.base import Context


class MeshTier(pulumi.ComponentResource):
    def __init__(self, name: str, ctx: Context, opts: pulumi.ResourceOptions | None = None):
        super().__init__("phoenix:tier:Mesh", name, None, opts)
        self.exports: dict = {}
        self.register_outputs({})
