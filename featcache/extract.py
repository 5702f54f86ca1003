"""``python -m featcache.extract``: the extraction CLI (see ``--help``); the work is in ``pipeline``.

``featcache.extract`` is also the API function. Importing this module would normally replace that
package attribute with the module, so the module is made callable and forwards to the function:
``featcache.extract(...)`` works however the package was imported.
"""
import sys
import types

from .cli import add_extract_arguments, build_parser, config_from_args, main, run_cli, setup_logging  # noqa: F401
from .pipeline import extract, list_layers  # noqa: F401


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return extract(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
