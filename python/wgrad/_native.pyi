"""Type stubs of wgrad's native module (python/src/lib.rs): flat float64 parameters laid out as
``Net.layout``, flat inputs [N·D], uint32 labels (0xffffffff marks a row with no target)."""

from typing import Dict, List, Optional, Tuple

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
U32 = npt.NDArray[np.uint32]
U8 = npt.NDArray[np.uint8]

class Net:
    def __init__(
        self, layers: str, image: Tuple[int, int, int], weight_decay: float, conventions: str, precision: str
    ) -> None: ...
    @property
    def layout(self) -> List[Tuple[str, List[int]]]: ...
    @property
    def state_layout(self) -> List[Tuple[str, int]]: ...
    @property
    def precision(self) -> str: ...
    @property
    def layers(self) -> str: ...
    @property
    def classes(self) -> int: ...
    def run(
        self, params: F64, state: Dict[str, F64], x: F64, labels: U32, train: bool, backward: bool, seed: int
    ) -> Tuple[F64, float, Optional[F64], Dict[str, F64]]: ...
    def numerical_gradient(
        self, params: F64, state: Dict[str, F64], x: F64, labels: U32, h: float, seed: int
    ) -> F64: ...
    def gradcheck(
        self,
        params: F64,
        x: F64,
        labels: U32,
        precision: str,
        h: Optional[float],
        strategy: str,
        tensors: List[str],
        directions: int,
        seed: int,
    ) -> str: ...
    def train(
        self,
        params: F64,
        state: Dict[str, F64],
        train_set: Tuple[U8, U8],
        test_set: Tuple[U8, U8],
        optimizer: Tuple[str, Dict[str, float]],
        schedule: Tuple[int, int, int],
        eval_first: Optional[int],
        verbose: bool,
    ) -> dict: ...

def load_checkpoint(path: str) -> Tuple[str, Tuple[int, int, int], float, str, F64, Dict[str, F64]]: ...
def devices() -> str: ...
def adapter() -> str: ...
def check_layer_source(
    source: str,
    file: str,
    input_shape: List[int],
    precision: str,
    batch: int,
    classes: int,
    seed: int,
    h: Optional[float],
) -> str: ...
def bundled_mnist() -> Tuple[U8, U8, U8, U8]: ...
