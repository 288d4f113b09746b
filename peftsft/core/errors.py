"""The one exception type for problems a user can fix."""


class UserError(Exception):
    """A problem caused by the user's input: printed as a clean message, exit code 2.

    `problems` holds every issue found (a recipe reports them all at once); `hint` says how to fix it.
    """

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None, problems: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.problems = problems or []

    def __str__(self) -> str:
        lines = [self.message, *(f"  - {p}" for p in self.problems)]
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)


class TrainingStopped(UserError):
    """Training stopped on purpose (Ctrl-C, non-finite loss); a checkpoint may allow resuming."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = 3):
        super().__init__(message, hint=hint)
        self.exit_code = exit_code
