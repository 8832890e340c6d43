"""An entry point that targets a class: pluggy would register the class and call its hooks unbound."""

from trl_formatkit import Format, hookimpl


class Plugin:
    @hookimpl
    def formatkit_register_formats(self, register):
        register(Format("from-a-class", {"klass"}, lambda row: []))
