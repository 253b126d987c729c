"""The one error base class the orchestration needs to know about."""


class PipelineError(Exception):
    """Bad input, configuration, data or model: the user must fix it, so retrying cannot help.

    The DAG fails a task at once on these; any other exception (network, worker loss) is retried.
    """
