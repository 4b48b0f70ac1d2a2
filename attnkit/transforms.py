"""Old import path of the kit's nbgrader preprocessors (now attnkit.preprocessors, one per module); goes away
next release."""
from attnkit.preprocessors.cap_outputs import CapOutputs  # noqa: F401
from attnkit.preprocessors.clear_solutions import ClearSolutionsWithStubs  # noqa: F401
from attnkit.preprocessors.dedupe import DropDuplicateIds  # noqa: F401
from attnkit.preprocessors.metadata import CheckCellMetadataOnce  # noqa: F401
from attnkit.preprocessors.normalise import NormaliseSubmission  # noqa: F401
from attnkit.preprocessors.score_only_errors import ScoreOnlyErrors  # noqa: F401
from attnkit.preprocessors.scrub import ScrubTestOutputs  # noqa: F401
from attnkit.preprocessors.untouched import NameUntouchedParts  # noqa: F401
