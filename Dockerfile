# Worker image. Not built in this project's CI (no Docker engine there); see README.
FROM python:3.11-slim
WORKDIR /srv/vectorize-worker
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock
COPY . .
ENV PYTHONPATH=/srv/vectorize-worker
EXPOSE 6066 9091
CMD ["python", "-m", "app", "worker", "-l", "info"]
