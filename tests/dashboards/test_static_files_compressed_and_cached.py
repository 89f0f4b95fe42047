"""plotly.min.js (4.8 MB) is served compressed, under a content-hashed name, cached for a year."""

import gzip
import re
from pathlib import Path

import plotly
import pytest
from django.core.management import call_command
from django.test import Client, override_settings

pytestmark = pytest.mark.django_db


def test_collected_plotly_is_gzipped_hashed_and_cached_for_a_year(tmp_path, tenant):
    with override_settings(STATIC_ROOT=tmp_path / "static"):
        call_command("collectstatic", interactive=False, verbosity=0)
        client = Client()  # a fresh handler: WhiteNoise reads the collected files when it starts
        client.force_login(tenant.manager)
        page = client.get(f"/dashboards/{tenant.org.slug}/").content.decode()
        url = re.search(r'src="(/static/plotly/plotly\.min\.[0-9a-f]{12}\.js)"', page)
        assert url, "the page does not link plotly.js by its hashed name"
        response = client.get(url.group(1), HTTP_ACCEPT_ENCODING="gzip")
        assert response.status_code == 200
        assert response["Content-Encoding"] == "gzip"
        assert "max-age=315360000" in response["Cache-Control"] and "immutable" in response["Cache-Control"]
        body = b"".join(response.streaming_content)
        original = (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()
        assert len(body) < len(original) / 3
        assert gzip.decompress(body) == original
        response.close()
