"""The whole suite runs monkey-patched, as `wxmgw serve` does: patch first, before any import."""

from gevent import monkey

monkey.patch_all()
