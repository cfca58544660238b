//! An S3-compatible server for the remote tests: `s3s-fs` (real S3 protocol,
//! SigV4 auth, multipart, range reads) over a temp directory, served on
//! 127.0.0.1:0 from a thread of the test process.
//!
//! Two things `s3s-fs` does not do on its own, added by the [`Serialized`]
//! wrapper: conditional writes (`If-None-Match: *`, `If-Match`) are decided
//! one at a time, so of several racing `PutMode::Create` writers exactly one
//! wins; and every request is counted by operation, so tests can assert how
//! many requests a push made. `fail_next` makes the next N requests answer
//! 500, to test retries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, S3};

pub const ACCESS_KEY: &str = "AKIATRAINYARDTEST";
pub const SECRET_KEY: &str = "trainyard-test-secret-key-0123456789";
pub const BUCKET: &str = "datasets";

#[derive(Default)]
pub struct Counters {
    by_op: Mutex<BTreeMap<&'static str, u64>>,
    pub fail_next: AtomicU64,
    /// PutObject number N (1-based) and later wait while this is non-zero
    /// and at most N.
    pub stall_puts_from: AtomicU64,
}

impl Counters {
    /// Counts a request; returns its number among those of its operation.
    fn hit(&self, op: &'static str) -> S3Result<u64> {
        let n = {
            let mut by_op = self.by_op.lock().unwrap();
            let c = by_op.entry(op).or_default();
            *c += 1;
            *c
        };
        let f = self.fail_next.load(Ordering::SeqCst);
        if f > 0
            && self
                .fail_next
                .compare_exchange(f, f - 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            return Err(s3s::s3_error!(InternalError, "injected failure"));
        }
        Ok(n)
    }
    pub fn total(&self) -> u64 {
        self.by_op.lock().unwrap().values().sum()
    }
    pub fn get(&self, op: &str) -> u64 {
        self.by_op.lock().unwrap().get(op).copied().unwrap_or(0)
    }
    pub fn reset(&self) {
        self.by_op.lock().unwrap().clear();
    }
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.by_op.lock().unwrap().clone()
    }
}

struct Serialized {
    inner: s3s_fs::FileSystem,
    writes: tokio::sync::Mutex<()>,
    counters: Arc<Counters>,
}

#[async_trait::async_trait]
impl S3 for Serialized {
    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        self.counters.hit("get_object")?;
        self.inner.get_object(req).await
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.counters.hit("head_object")?;
        self.inner.head_object(req).await
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.counters.hit("head_bucket")?;
        self.inner.head_bucket(req).await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.counters.hit("list_objects_v2")?;
        self.inner.list_objects_v2(req).await
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        self.counters.hit("list_objects")?;
        self.inner.list_objects(req).await
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.counters.hit("delete_object")?;
        self.inner.delete_object(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.counters.hit("create_multipart_upload")?;
        self.inner.create_multipart_upload(req).await
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        self.counters.hit("upload_part")?;
        self.inner.upload_part(req).await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.counters.hit("abort_multipart_upload")?;
        self.inner.abort_multipart_upload(req).await
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        self.counters.hit("list_parts")?;
        self.inner.list_parts(req).await
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        self.counters.hit("copy_object")?;
        self.inner.copy_object(req).await
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let n = self.counters.hit("put_object")?;
        loop {
            let from = self.counters.stall_puts_from.load(Ordering::SeqCst);
            if from == 0 || n < from {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if req.input.if_none_match.is_some() || req.input.if_match.is_some() {
            let _g = self.writes.lock().await;
            return self.inner.put_object(req).await;
        }
        self.inner.put_object(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.counters.hit("complete_multipart_upload")?;
        let _g = self.writes.lock().await;
        self.inner.complete_multipart_upload(req).await
    }
}

/// A running server; stops when dropped.
pub struct S3Server {
    pub url: String,
    pub root: PathBuf,
    pub counters: Arc<Counters>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl S3Server {
    /// Serve `root` (bucket `datasets` is created) on 127.0.0.1 (port 0 = any).
    pub fn start(root: &Path, port: u16) -> S3Server {
        std::fs::create_dir_all(root.join(BUCKET)).unwrap();
        let counters = Arc::new(Counters::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let root2 = root.to_path_buf();
        let c2 = counters.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let fs = s3s_fs::FileSystem::new(&root2).unwrap();
                let mut b = s3s::service::S3ServiceBuilder::new(Serialized {
                    inner: fs,
                    writes: tokio::sync::Mutex::new(()),
                    counters: c2,
                });
                b.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
                let service = b.build();
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let http = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                let mut stop_rx = stop_rx;
                loop {
                    let (sock, _) = tokio::select! {
                        r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                        _ = &mut stop_rx => break,
                    };
                    let conn = http
                        .serve_connection(hyper_util::rt::TokioIo::new(sock), service.clone())
                        .into_owned();
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
            });
        });
        let addr = rx.recv().unwrap();
        S3Server {
            url: format!("http://{addr}"),
            root: root.to_path_buf(),
            counters,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// The on-disk file of a key in the bucket.
    pub fn file(&self, key: &str) -> PathBuf {
        self.root.join(BUCKET).join(key)
    }

    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
