"""Evaluating models the way the field does: loss, perplexity and bits per byte over a text
(perplexity), multiple choice in HellaSwag's format (choice), BLEU and ROUGE of generated
continuations (continuations), and lm-evaluation-harness tasks (harness, imported on its own
since it needs the harness installed)."""

from .choice import ChoiceScore, Question, multiple_choice, read_questions
from .continuations import GenerationScore, score_continuations
from .perplexity import Score, evaluate, score, validation_text, windows

__all__ = ["ChoiceScore", "GenerationScore", "Question", "Score", "evaluate", "multiple_choice", "read_questions",
           "score", "score_continuations", "validation_text", "windows"]
