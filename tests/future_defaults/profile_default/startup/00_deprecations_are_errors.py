"""IPython start-up file for `./tutorial.sh test-latest`: notebook code that calls a
deprecated API fails instead of warning, so a coming removal is seen before readers see it.

Only warnings attributed to the notebook's own code (module ``__main__``) or to this
repository's ``helpers`` become errors; libraries' internal warnings stay warnings.
"""

import warnings

for category in (DeprecationWarning, FutureWarning):
    warnings.filterwarnings("error", category=category, module=r"(__main__|helpers)(\.|$)")
