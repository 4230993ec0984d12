"""SSRF-safe outbound HTTP (URL inputs, webhook deliveries) and signed webhooks.

Import from the modules: ``policy`` (what may be reached), ``client`` (the guarded httpx
client), ``content`` (sniffing what came back) and ``webhooks`` (signing and delivery).
The package itself imports nothing, because bgsvc.config validates BGSVC_OUTBOUND_ALLOW with
``policy`` and the client reads config.
"""
