"""Known-wrong implementations of the exercises: one module per lesson, named like its file in ``solutions/``.

``WRONG`` maps every exercise id to its plausible mistakes, each with the words its check's hint must contain.
"""

import importlib
import pkgutil

WRONG = {
    exercise_id: wrongs
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__))
    for exercise_id, wrongs in importlib.import_module(f"{__name__}.{module}").WRONG.items()
}
