"""Images given by URL (remove.bg's ``image_url``, rembg's ``GET /api/remove?url=``),
fetched through the guarded outbound client. Import from ``bgsvc.urlinputs.fetcher``."""
