from .errors import SeqmnistError

__all__ = ["SeqmnistError"]
