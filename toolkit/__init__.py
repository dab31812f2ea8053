"""chainkit: package LangChain chains with MLflow and run them offline from recorded traffic."""

from toolkit.cassette import Cassette, Interaction
from toolkit.errors import ChainkitError
from toolkit.replay import RecordMode, use_cassette

__version__ = "0.1.0"

__all__ = ["Cassette", "ChainkitError", "Interaction", "RecordMode", "__version__", "use_cassette"]
