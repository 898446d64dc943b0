"""The physical floor: read every input patch, write the output zarr once; no model, no merge.

End-to-end runs with the ``passthrough`` model are judged against this on the
same slide (``SegmentFigures.track_ratio_to_floor``; the design asks for at
least 0.5). The two halves are timed alone too.
"""

from __future__ import annotations

from benchmarks.common import (
    OneShot,
    Scratch,
    floor_plan,
    grid,
    make_slide,
    physical_floor,
    plan_config,
    read_all_patches,
    write_all_chunks,
)


class PhysicalFloor(OneShot):
    """Reads of every plan patch plus one whole-chunk write of every output chunk."""

    params = (grid(2048, 8192, slow=(16384,)),)
    param_names = ("size",)
    timeout = 600

    def setup(self, size: int) -> None:
        """Describe the slide and plan it."""
        self.scratch = Scratch()  # first: asv calls teardown after a skip too
        self.slide = make_slide(size)
        self.config = plan_config()
        self.plan = floor_plan(self.slide, self.config)

    def teardown(self, size: int) -> None:
        """Delete the output."""
        self.scratch.close()

    def time_floor(self, size: int) -> None:
        """Read every input patch and write every output chunk."""
        physical_floor(self.slide, self.config, self.scratch.path("floor.zarr"))

    def peakmem_floor(self, size: int) -> None:
        """Peak RSS over the floor run."""
        physical_floor(self.slide, self.config, self.scratch.path("floor.zarr"))

    def peakmem_reference(self, size: int) -> None:
        """Peak RSS of setup alone."""

    def time_read_patches(self, size: int) -> None:
        """The read half: every input patch of the plan, in plan order."""
        read_all_patches(self.slide, self.plan)

    def time_write_output(self, size: int) -> None:
        """The write half: every output chunk once."""
        write_all_chunks(self.plan, self.scratch.path("write.zarr"))
