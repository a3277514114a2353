"""`saesteer info`: versions and the compute device this machine offers."""

NAME = "info"
ORDER = 90
HELP = "show versions of saesteer and its engines, and the available device"


def add_arguments(parser) -> None:  # no options
    pass


def run(args) -> int:
    import platform

    import sae_lens
    import torch
    import transformer_lens

    import saesteer

    print(f"saesteer         {saesteer.__version__}")
    print(f"python           {platform.python_version()}")
    print(f"torch            {torch.__version__} (threads: {torch.get_num_threads()})")
    print(f"transformer-lens {transformer_lens.__version__ if hasattr(transformer_lens, '__version__') else '?'}")
    print(f"sae-lens         {sae_lens.__version__}")
    cuda = torch.cuda.is_available()
    print(f"device           {'cuda: ' + torch.cuda.get_device_name(0) if cuda else 'cpu'}")
    return 0
