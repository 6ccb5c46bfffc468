"""The fetch manifest's checksums are the shared files' own (so a download is verified
against the real bytes); nothing is downloaded here."""
import pytest

from realtime_prn.fetch import MANIFEST, sha256
from realtime_prn.paths import data_root


@pytest.mark.parametrize("rel,url,digest", MANIFEST, ids=[m[0] for m in MANIFEST])
def test_manifest_matches_shared_files(rel, url, digest):
    path = data_root() / rel
    if not path.exists():
        pytest.skip(f"{path} not present")
    assert url.startswith("https://") and len(digest) == 64
    assert sha256(path) == digest
