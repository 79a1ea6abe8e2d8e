"""torchrun target for the distributed test: run train.py's main, then store this rank's final weights."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import train  # noqa: E402

if __name__ == '__main__':
    output_dir, argv = sys.argv[1], sys.argv[2:]
    state = train.main(argv)
    torch.save(state.model.state_dict(), os.path.join(output_dir, f'rank_{os.environ["RANK"]}.pth'))
