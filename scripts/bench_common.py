"""What the PyTorch benchmark scripts share."""
import platform


def cpu_model():
    """The CPU's model name, written beside every number (the machine kind changes)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
