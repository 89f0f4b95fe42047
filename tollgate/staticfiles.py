"""Static files storage: WhiteNoise's compressed, content-hashed files once collected, plain names before.

WhiteNoise's CompressedManifestStaticFilesStorage writes each file under a name
with its content hash (plotly.min.<hash>.js) plus .gz (and .br) copies, so
browsers may keep it for a year and a new release changes the name. Its
manifest exists only after `collectstatic`; before that (tests, a checkout
that never collected) Django's manifest storage raises on every {% static %}.
This subclass answers the plain name instead, which WhiteNoise then serves
from the apps' folders (WHITENOISE_USE_FINDERS), uncompressed.
"""

from __future__ import annotations

from whitenoise.storage import CompressedManifestStaticFilesStorage


class CompressedHashedStaticFiles(CompressedManifestStaticFilesStorage):
    manifest_strict = False

    def stored_name(self, name: str) -> str:
        if not self.hashed_files:  # nothing collected yet (no manifest)
            return name
        return super().stored_name(name)
