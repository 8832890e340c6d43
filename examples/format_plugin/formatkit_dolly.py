"""A trl-formatkit format plugin in one file: databricks-dolly-15k rows -> chat messages."""

from trl_formatkit import Format, hookimpl


def dolly_to_messages(row):
    """instruction (+ context, when there is one) -> user turn; response -> assistant turn."""
    user = row["instruction"]
    if row.get("context"):
        user += "\n\n" + row["context"]
    return [{"role": "user", "content": user}, {"role": "assistant", "content": row["response"]}]


@hookimpl
def formatkit_register_formats(register):
    register(
        Format(
            name="dolly",
            columns={"instruction", "context", "response"},
            to_messages=dolly_to_messages,
            description="databricks-dolly-15k: instruction / context / response (category is ignored)",
            aliases=("dolly-15k",),
        )
    )
