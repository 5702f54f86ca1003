"""featcache/_util.py: atomic writes through temporary files that are new, unguessable and still ours at the rename."""
import pytest

from featcache import FeatcacheError


def test_temporary_files_are_new_unguessable_and_still_ours_at_the_rename(tmp_path):
    """atomic_path's temporary file is created O_EXCL under a random name; one swapped for a link while it is
    written is refused at the rename (a real link put in its place), and the target is never created."""
    import os

    from featcache._util import atomic_path, orphan_temporaries

    target = tmp_path / "c.h5"
    with atomic_path(target) as a:
        with atomic_path(target) as b:
            assert a != b and a.name.startswith(f".c.h5.{os.getpid()}.") and a.name.endswith(".tmp")
            assert a.is_file() and not a.is_symlink()
            b.write_bytes(b"b")
        a.write_bytes(b"a")
    assert target.read_bytes() == b"a"
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    with pytest.raises(FeatcacheError, match="was replaced while featcache wrote it"):
        with atomic_path(tmp_path / "d.h5") as tmp:
            tmp.unlink()
            os.symlink(victim, tmp)
    assert not (tmp_path / "d.h5").exists() and victim.read_bytes() == b"keep"
    dead = tmp_path / ".e.h5.999999999.x1y2.tmp"  # a pid no process has
    dead.write_bytes(b"half")
    assert orphan_temporaries(tmp_path / "e.h5") == [dead]
