# RadLens: `make run` serves the dashboard, `make test` runs every test. Both create or reuse .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
SHARED_DATA := $(abspath ../shared/data)
export RADLENS_HOME ?= $(CURDIR)/.radlens
# Datasets are read from ../shared/data when present (never copied into the repository).
ifneq ($(wildcard $(SHARED_DATA)),)
export RADLENS_DATA_DIR ?= $(SHARED_DATA)
endif
RUNTIME_STAMP := $(VENV)/.runtime-$(shell cat requirements.txt | sha256sum | cut -c1-16)
DEV_STAMP := $(VENV)/.dev-$(shell cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-16)

.PHONY: run test test-fast lint bench train debian-tools clean delete-all-data

$(PY):
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# A stamp keyed on the requirements' hash: unchanged requirements skip the install entirely.
$(RUNTIME_STAMP): | $(PY)
	$(PY) -m pip install -q -r requirements.txt
	rm -f $(VENV)/.runtime-*; touch $@

$(DEV_STAMP): $(RUNTIME_STAMP)
	$(PY) -m pip install -q -r requirements-dev.txt
	rm -f $(VENV)/.dev-*; touch $@

# Serves on 127.0.0.1:8501 with local accounts; the first start prints a one-time link for the first admin.
run: $(RUNTIME_STAMP)
	$(PY) -m engine init
	$(PY) -m dashboard.serve

# Debian tools the tests use: chromium (real-browser tests), dicom3tools (dciodvfy, DICOM conformance) and
# Orthanc with its DICOMweb plugin (the real PACS of tests/test_pacs.py) and poppler (pdftotext, pdftoppm: the
# PDF report tests). Each entry is what must exist (a command, or a file when it starts with /) and its package.
# Installed when missing and we are root; otherwise those tests skip and say why.
DEBIAN_TOOLS := chromium:chromium dciodvfy:dicom3tools Orthanc:orthanc pdftotext:poppler-utils \
	/usr/share/orthanc/plugins/libOrthancDicomWeb.so:orthanc-dicomweb
debian-tools:
	@missing=""; for pair in $(DEBIAN_TOOLS); do \
		need=$${pair%%:*}; \
		case $$need in /*) [ -e $$need ] ;; *) command -v $$need >/dev/null 2>&1 ;; esac \
			|| missing="$$missing $${pair##*:}"; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian$$missing for the tests"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
			|| echo "could not install$$missing; the tests that need them will skip"; \
	fi

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .

# Two pytest-xdist workers (tests use their own homes, free ports and temporary folders); a module whose fixtures
# are module-wide (an Orthanc, a pushed study) is one xdist_group, so they are set up once. The 25 slowest are printed.
# One torch thread per process: the workers are the parallelism (two 2-thread processes on 2 cores ran a ResNet-18
# 2.5x slower than two 1-thread ones: OpenMP threads spin against each other).
TEST_WORKERS ?= 2
PYTEST := TQDM_DISABLE=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup

test: lint debian-tools
	home=$$(mktemp -d); RADLENS_HOME=$$home $(PYTEST) --durations=25; status=$$?; rm -rf $$home; exit $$status

# The unit tier while working (no training runs, background jobs, browser, PACS or whole pages): under 3 minutes.
test-fast: lint
	home=$$(mktemp -d); RADLENS_HOME=$$home $(PYTEST) -m "not slow" --durations=10; status=$$?; rm -rf $$home; \
		exit $$status

bench: $(DEV_STAMP)
	$(PY) -m bench.ingest
	$(PY) -m bench.worklist
	$(PY) -m bench.metrics
	$(PY) -m bench.case_latency
	$(PY) -m bench.ood
	$(PY) -m bench.explain runtime
	$(PY) -m bench.explain faithfulness --skip scorecam
	$(PY) -m bench.explain faithfulness --methods scorecam,gradcam,random --every 4 --tag scorecam
	$(PY) -m bench.segment quality
	$(PY) -m bench.segment latency
	$(PY) -m bench.train throughput
	$(PY) -m bench.hostile
	$(PY) -m bench.train kills
	$(PY) -m bench.train serving
	$(PY) -m bench.train time-to-auc

# Re-train the shipped models (the exact commands are also in their cards, weights/*.json).
train: $(RUNTIME_STAMP)
	$(PY) -m engine.train.run --dataset cxr_pneumonia --model resnet18 --size 224 --epochs 30 --patience 8 \
		--half --threads 2 --name cxr-pneumonia-resnet18 --output $(RADLENS_HOME)/runs/cxr-pneumonia-resnet18
	$(PY) -m engine.train.run --dataset cxr_pneumonia --model resnet18 --size 224 --epochs 12 --batch-size 32 \
		--threads 2 --precision bf16 --label-smoothing 0.1 --folds 5 --half --name cxr-pneumonia-resnet18-v2 \
		--version 2.0.0 --output $(RADLENS_HOME)/runs/cxr-pneumonia-resnet18-v2
	$(PY) -m engine.train.run --dataset hc18 --model unet --size 256 --epochs 40 --patience 10 --batch-size 16 \
		--threads 2 --name hc18-unet --output $(RADLENS_HOME)/runs/hc18-unet
	$(PY) -m engine.train.run --dataset adrenalmnist3d_64 --size 32 --depth 32 --model slice_rnn --precision bf16 \
		--patience 40 --threads 1 --name adrenal64-slice-rnn --output $(RADLENS_HOME)/runs/adrenal64-slice-rnn

# Removes what can be rebuilt (the virtual environment, caches); never cases, reviews, audit rows or models.
clean:
	rm -rf $(VENV) .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# Deletes every case, review, audit row, trained model and key under $(RADLENS_HOME): asks first.
delete-all-data:
	@printf "This deletes %s: every case, review, audit row, trained model and the keys. Type DELETE to go on: " \
		"$(RADLENS_HOME)"; read answer; [ "$$answer" = DELETE ] && rm -rf "$(RADLENS_HOME)" && echo "deleted"
