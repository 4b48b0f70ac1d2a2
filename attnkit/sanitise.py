"""Old import path of the feedback sanitiser (now attnkit.preprocessors.sanitise); goes away next release."""
from attnkit.preprocessors.sanitise import (SanitiseNotebook, clean_html, clean_notebook, clean_output,  # noqa: F401
                                            markdown2html, render_markdown)
