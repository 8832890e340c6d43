"""Test plugin for trl-formatkit: two formats registered through the entry point ``example``."""

from trl_formatkit import Format, hookimpl


def qa_to_messages(row):
    return [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]}]


def oasst_to_messages(row):
    return [{"role": "user", "content": row["INSTRUCTION"]}, {"role": "assistant", "content": row["RESPONSE"]}]


@hookimpl
def formatkit_register_formats(register):
    register(Format("qa", {"question", "answer"}, qa_to_messages, "question / answer pairs", ("question-answer",)))
    register(Format("oasst", {"INSTRUCTION", "RESPONSE"}, oasst_to_messages, "OIG / oasst-style upper-case columns"))
