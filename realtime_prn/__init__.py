"""realtime-prn: dense 3D faces (PRN position maps) from images, videos and webcams."""
from .api import FaceReconstructor, Options
from .face import Face

__all__ = ["Face", "FaceReconstructor", "Options"]
__version__ = "0.1.0"
