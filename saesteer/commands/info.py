"""`saesteer info`: versions and the compute device this machine offers."""

NAME = "info"
ORDER = 90
HELP = "show versions of saesteer and its engines, and the available device"


def add_arguments(parser) -> None:  # no options
    pass


def run(args) -> int:
    import platform

    import torch  # for the device and threads; the engines' versions come from their metadata (no import)

    import saesteer

    print(f"saesteer         {saesteer.__version__}")
    print(f"python           {platform.python_version()}")
    print(f"torch            {torch.__version__} (threads: {torch.get_num_threads()})")
    print(f"transformer-lens {_version('transformer-lens')}")
    print(f"sae-lens         {_version('sae-lens')}")
    cuda = torch.cuda.is_available()
    print(f"device           {'cuda: ' + torch.cuda.get_device_name(0) if cuda else 'cpu'}")
    return 0


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"
