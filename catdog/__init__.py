"""catdog: the classic small cats-vs-dogs CNN in PyTorch, and what each layer sees."""

CLASSES = ("cats", "dogs")  # alphabetical, as Keras's flow_from_directory orders them: cats=0, dogs=1


class CatDogError(Exception):
    """A user-facing failure: the entry points print its message as one line and exit with code 2."""
