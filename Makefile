# Makefile - builds ./vgg_dist (both backends in one binary) and the tests, out of tree in build/.
#   make                 release build          make debug   -O0 -g with ASan/UBSan on host code
#   make test            all tests              make bench   CPU benchmark beside PyTorch
#   make run             set up and train       make fuzz    libFuzzer targets, FUZZ_SECONDS each
#   make clean, make help
# `make test` and `make run` first install what they need (scripts/setup.sh); run, test, clean
# and help never stop on detection, which only the build rules need.
# Overridable: CUDA_HOME, CUDA_ARCH (e.g. "80 90"), NVCC, MPICC, HOSTCC, CUDNN_INC/CUDNN_LIB,
# NCCL_INC/NCCL_LIB (when cuDNN or NCCL live outside CUDA_HOME), OPENBLAS_INC/OPENBLAS_LIB,
# DEBUG=1, SANITIZE=1, CUDA=0 (build without the CUDA backend), WERROR=0 (nvcc and host-compiler
# warnings stay warnings: the GPU check's build, where another gcc may warn anew), PY_TORCH (the
# Python with torch that the golden tests run; compiled into test_unit).
#
# Only vgg_dist links MPI (comm/comm_mpi.c, comm_nccl.c, compiled and linked by $(MPICC)); the
# single-process tools (test_unit, bench_step, parity_step, gen_cifar) link comm/comm_single.c
# and build with $(HOSTCC) alone, so they run where libmpi is missing or cannot load.

CUDA_HOME ?= /usr/local/cuda
CUDA_ARCH ?= 80 90
NVCC ?= $(CUDA_HOME)/bin/nvcc
MPICC ?= mpicc
HOSTCC ?= gcc
WERROR ?= 1
BUILD ?= build
BIN ?= vgg_dist
PY_TORCH ?= /usr/bin/python3

ifeq ($(DEBUG),1)
  OPT := -O0 -g
  SANITIZE ?= 1
else
  OPT := -O3 -g
endif
SAN :=
ifeq ($(SANITIZE),1)
  SAN := -fsanitize=address,undefined -fno-omit-frame-pointer
endif

# ---- detection (printed once per make invocation) ------------------------------------------
# The goals that need nothing detected: they set up first (run, test) or build nothing.
NODEPS_GOALS := run test clean help debug fuzz-bins
BUILDING := $(filter-out $(NODEPS_GOALS),$(or $(MAKECMDGOALS),all))
# MPI is needed by vgg_dist alone: its absence stops those rules (require_mpi), not make.
HAVE_MPI := $(shell command -v $(MPICC) >/dev/null 2>&1 && echo 1 || echo 0)
require_mpi = @command -v $(MPICC) > /dev/null 2>&1 || { echo "mpicc not found: install Open MPI \
  (apt-get install openmpi-bin libopenmpi-dev) or set MPICC" >&2; exit 1; }
# OpenBLAS itself, not any cblas.h: Debian's alternatives may point the generic cblas.h at
# netlib's (libblas-dev), which has neither -lopenblas nor openblas_set_num_threads. OpenBLAS's
# own include directory goes first on the include path, so <cblas.h> is OpenBLAS's.
# OPENBLAS_INC / OPENBLAS_LIB: set them for an OpenBLAS elsewhere (the GPU check's staged copy);
# else pkg-config's openblas, else Debian's and the usual directories.
OPENBLAS_INC ?= $(firstword $(shell pkg-config --variable=includedir openblas 2>/dev/null) \
                  $(wildcard /usr/include/x86_64-linux-gnu/openblas-pthread /usr/include/x86_64-linux-gnu/openblas-openmp \
                  /usr/include/openblas /opt/OpenBLAS/include))
OPENBLAS_LIB ?= $(firstword $(shell pkg-config --variable=libdir openblas 2>/dev/null) \
                  $(patsubst %/libopenblas.so,%,$(wildcard /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so \
                  /usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so /usr/lib/x86_64-linux-gnu/libopenblas.so \
                  /opt/OpenBLAS/lib/libopenblas.so)))
# Evaluated once (pkg-config runs once, not at every expansion).
OPENBLAS_INC := $(OPENBLAS_INC)
OPENBLAS_LIB := $(OPENBLAS_LIB)
HAVE_OPENBLAS := $(shell grep -qs openblas_set_num_threads "$(OPENBLAS_INC)/cblas.h" && \
                   test -e "$(OPENBLAS_LIB)/libopenblas.so" && echo 1 || echo 0)
ifneq ($(BUILDING),)
  ifeq ($(HAVE_OPENBLAS),0)
    $(error OpenBLAS not found (its cblas.h and libopenblas.so): run scripts/setup.sh, or apt-get install libopenblas-dev, or set OPENBLAS_INC and OPENBLAS_LIB)
  endif
endif
CUDNN_INC ?= $(CUDA_HOME)/include
NCCL_INC ?= $(CUDA_HOME)/include
ifeq ($(origin CUDA),undefined)
  CUDA := $(shell test -x $(NVCC) && test -e $(CUDNN_INC)/cudnn.h && test -e $(NCCL_INC)/nccl.h && echo 1 || echo 0)
endif
CUDA_LIBDIR ?= $(CUDA_HOME)/lib64
CUDNN_LIB ?= $(CUDA_LIBDIR)
NCCL_LIB ?= $(CUDA_LIBDIR)
MPI_VERSION := $(if $(filter 1,$(HAVE_MPI)),$(shell $(MPICC) -showme:version 2>/dev/null | head -c 40),none)
ifneq ($(BUILDING),)
$(info vgg_dist build: MPI=$(MPI_VERSION) OpenBLAS=$(OPENBLAS_LIB) CUDA=$(CUDA) (CUDA_HOME=$(CUDA_HOME), arch $(CUDA_ARCH)) DEBUG=$(DEBUG) SANITIZE=$(SANITIZE))
endif

CC := $(HOSTCC)
WARN := -Wall -Wextra -Wno-unused-parameter
# -ffp-contract=off: no fused multiply-adds the source does not write (the CPU backend matches
# PyTorch's rounding). -fno-math-errno: sqrtf is the instruction alone, so loops that take a
# square root (Adam) vectorise; nothing reads errno after a math function.
CFLAGS := -std=gnu11 $(OPT) $(WARN) -ffp-contract=off -fno-math-errno -fopenmp -Isrc -Ikernels -Icomm -MMD -MP $(SAN)
LDLIBS := -lopenblas -lm
LDFLAGS := -fopenmp $(SAN)
CFLAGS += -I$(OPENBLAS_INC)
LDFLAGS += -L$(OPENBLAS_LIB) -Wl,-rpath,$(OPENBLAS_LIB)

HOST_SRC := $(filter-out src/main.c,$(wildcard src/*.c)) $(wildcard kernels/*.c) \
            $(wildcard kernels/cpu/*.c)
MPI_SRC := comm/comm_mpi.c
CU_SRC :=
ifeq ($(CUDA),1)
  CU_SRC := $(wildcard kernels/cuda/*.cu)
  HOST_SRC += $(wildcard kernels/cuda/*.c)
  MPI_SRC += comm/comm_nccl.c
  CFLAGS += -DVGG_HAVE_CUDA -I$(CUDA_HOME)/include -I$(CUDNN_INC) -I$(NCCL_INC)
  GENCODE := $(foreach a,$(CUDA_ARCH),-gencode arch=compute_$(a),code=sm_$(a))
  NVFLAGS := -std=c++17 -O3 -g -lineinfo $(GENCODE) -Isrc -Ikernels -Icomm -I$(CUDNN_INC) \
             -I$(NCCL_INC) -MMD -MP -Xcompiler -Wall,-Wextra,-Wno-unused-parameter \
             $(if $(filter 1,$(WERROR)),-Werror=all-warnings) -DVGG_HAVE_CUDA
  LDFLAGS += $(foreach d,$(sort $(CUDA_LIBDIR) $(CUDNN_LIB) $(NCCL_LIB)),-L$(d) -Wl,-rpath,$(d))
  LDLIBS += -lcudnn -lcublasLt -lcublas -lnccl -lcudart -lstdc++
else
  HOST_SRC += $(wildcard kernels/nocuda/*.c)
endif

OBJ := $(HOST_SRC:%.c=$(BUILD)/%.o) $(CU_SRC:%.cu=$(BUILD)/%.cu.o)
MPI_OBJ := $(MPI_SRC:%.c=$(BUILD)/%.o)
SOLO_OBJ := $(OBJ) $(BUILD)/comm/comm_single.o # the single-process tools
TEST_SRC := $(wildcard tests/*.c)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)
# The one definition of the golden tests' Python: tests/test_golden.c reads it as VGG_PY_TORCH.
$(TEST_OBJ): CFLAGS += -DVGG_PY_TORCH='"$(PY_TORCH)"'

.PHONY: all debug test check bench run clean help fuzz fuzz-bins FORCE
all: $(BIN)

# The configuration a build directory was made with: when it changes (CUDA=1 then CUDA=0, another
# arch, DEBUG, SANITIZE, another OpenBLAS or compiler), every object is rebuilt, never mixed.
CONFIG := CUDA=$(CUDA) arch=$(CUDA_ARCH) opt=$(OPT) san=$(SAN) werror=$(WERROR) \
          blas=$(OPENBLAS_INC):$(OPENBLAS_LIB) cc=$(HOSTCC) nvcc=$(NVCC) mpicc=$(MPICC) \
          cuda=$(CUDA_HOME) cudnn=$(CUDNN_INC):$(CUDNN_LIB) nccl=$(NCCL_INC):$(NCCL_LIB) \
          py_torch=$(PY_TORCH)
STAMP := $(BUILD)/config.stamp
$(STAMP): FORCE
	@mkdir -p $(BUILD)
	@if [ "$$(cat $@ 2> /dev/null)" != "$(CONFIG)" ]; then \
	  if [ -e $@ ]; then echo "build configuration changed: rebuilding everything in $(BUILD)"; fi; \
	  echo "$(CONFIG)" > $@; fi
FORCE:

$(BIN): $(BUILD)/src/main.o $(OBJ) $(MPI_OBJ) $(STAMP)
	$(require_mpi)
	$(MPICC) -o $@ $(filter %.o,$^) $(LDFLAGS) $(LDLIBS)

$(BUILD)/test_unit: $(TEST_OBJ) $(SOLO_OBJ) $(STAMP)
	$(CC) -o $@ $(filter %.o,$^) $(LDFLAGS) $(LDLIBS)

$(BUILD)/gen_cifar: $(BUILD)/tests/tools/gen_cifar.o $(BUILD)/tests/cifar_gen.o $(BUILD)/src/check.o $(STAMP)
	$(CC) -o $@ $(filter %.o,$^) $(LDFLAGS) $(LDLIBS)

$(BUILD)/bench_step: $(BUILD)/tests/tools/bench_step.o $(SOLO_OBJ) $(STAMP)
	$(CC) -o $@ $(filter %.o,$^) $(LDFLAGS) $(LDLIBS)

# The CPU backend's conv algorithms layer by layer (BENCHMARKS.md, "CPU convolutions").
$(BUILD)/conv_bench: $(BUILD)/tests/tools/conv_bench.o $(SOLO_OBJ) $(STAMP)
	$(CC) -o $@ $(filter %.o,$^) $(LDFLAGS) $(LDLIBS)

$(BUILD)/parity_step: $(BUILD)/tests/tools/parity_step.o $(BUILD)/tests/steps.o $(SOLO_OBJ) $(STAMP)
	$(CC) -o $@ $(filter %.o,$^) $(LDFLAGS) $(LDLIBS)

# bench_step over MPI (the same object, linked with comm/comm_mpi.c as vgg_dist is): the 2-rank
# rows of `make bench`, mpirun -np 2 build/bench_step_mpi.
$(BUILD)/bench_step_mpi: $(BUILD)/tests/tools/bench_step.o $(OBJ) $(MPI_OBJ) $(STAMP)
	$(require_mpi)
	$(MPICC) -o $@ $(filter %.o,$^) $(LDFLAGS) $(LDLIBS)

# The all-reduce timing tool: it times comm/comm_mpi.c's gradient reducer, so it links MPI as
# vgg_dist does (its own source includes comm.h only).
$(BUILD)/allreduce_bench: $(BUILD)/tests/tools/allreduce_bench.o $(OBJ) $(MPI_OBJ) $(STAMP)
	$(require_mpi)
	$(MPICC) -o $@ $(filter %.o,$^) $(LDFLAGS) $(LDLIBS)

$(BUILD)/%.o: %.c $(STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# The communicator that includes mpi.h: compiled by the MPI wrapper.
$(MPI_OBJ): $(BUILD)/%.o: %.c $(STAMP)
	$(require_mpi)
	@mkdir -p $(dir $@)
	$(MPICC) $(CFLAGS) -c $< -o $@

$(BUILD)/%.cu.o: %.cu $(STAMP)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

# -O0 -g with AddressSanitizer and UBSan on the host code: build/debug/vgg_dist and its tests.
debug:
	$(MAKE) DEBUG=1 BUILD=build/debug BIN=build/debug/vgg_dist build/debug/vgg_dist build/debug/test_unit

# test: install what the build and the tests need, then build and run every suite (check).
test:
	scripts/setup.sh test
	$(MAKE) check

check: $(BIN) $(BUILD)/test_unit $(BUILD)/gen_cifar
	BUILD=$(BUILD) tests/run_all.sh $(BUILD)/test_unit ./$(BIN)

bench: $(BUILD)/bench_step $(BUILD)/bench_step_mpi $(BUILD)/gen_cifar $(BIN)
	scripts/bench.py --build $(BUILD) --vgg-dist $(BIN)

run:
	scripts/run.sh $(ARGS)

# libFuzzer targets (tests/fuzz/): the readers of what a stranger may hand the trainer, built by
# clang with ASan and UBSan from the sources they exercise; `exit` is wrapped so that a refused
# input returns to the fuzzer (tests/fuzz/fuzz.h). `make fuzz` runs each for FUZZ_SECONDS
# (tests/fuzz/run.sh); `make test` runs a short pass.
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 60
FUZZ_FLAGS := -std=gnu11 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
              -Isrc -Ikernels -Icomm -Wl,--wrap=exit
FUZZ_TARGETS := cifar config checkpoint
FUZZ_BINS := $(FUZZ_TARGETS:%=$(BUILD)/fuzz/fuzz_%)
$(BUILD)/fuzz/fuzz_cifar: tests/fuzz/fuzz_cifar.c src/cifar10.c src/check.c
$(BUILD)/fuzz/fuzz_config: tests/fuzz/fuzz_config.c src/config.c src/check.c
$(BUILD)/fuzz/fuzz_checkpoint: tests/fuzz/fuzz_checkpoint.c src/checkpoint.c src/run_state.c \
                               src/model.c src/check.c src/log.c comm/comm_single.c
$(FUZZ_BINS): tests/fuzz/fuzz.h $(wildcard src/*.h kernels/*.h comm/*.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $(filter %.c,$^) -lm
fuzz-bins: $(FUZZ_BINS)
fuzz: fuzz-bins $(BUILD)/gen_cifar $(BIN)
	BUILD=$(BUILD) tests/fuzz/run.sh $(FUZZ_SECONDS)

clean:
	rm -rf build vgg_dist

help:
	@echo "make          build ./vgg_dist (CUDA backend when the toolkit, cuDNN and NCCL are found)"
	@echo "make run      install what training needs, build, find CIFAR-10, train (ARGS=\"...\")"
	@echo "make test     install what the tests need, build, run every suite (make check: no install)"
	@echo "make bench    CPU benchmark beside PyTorch      make debug   ASan/UBSan build in build/debug"
	@echo "make clean    remove build/ and ./vgg_dist"
	@echo "variables: CUDA=0|1 CUDA_ARCH CUDA_HOME DEBUG=1 SANITIZE=1 WERROR=0 MPICC HOSTCC OPENBLAS_INC OPENBLAS_LIB"

-include $(SOLO_OBJ:.o=.d) $(MPI_OBJ:.o=.d) $(TEST_OBJ:.o=.d) $(BUILD)/src/main.d
