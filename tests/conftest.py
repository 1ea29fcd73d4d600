import torch

# the suite runs on 2 cores; more threads than cores only adds contention
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
