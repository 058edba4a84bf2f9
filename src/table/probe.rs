//! The start-up probe of a lake root's store: create-only writes
//! (`PutMode::Create`: S3 and Azure `If-None-Match: *`, GCS generation 0,
//! local `O_EXCL`) are what make sluice's commits, Kinesis position
//! sidecars and leases safe, so a store that overwrites instead is refused
//! before anything is written, never used unsafely.

/// Creates one object twice with `PutMode::Create`: the second must fail.
pub async fn create_only(store: &dyn object_store::ObjectStore) -> Result<(), String> {
    use object_store::{ObjectStoreExt as _, PutMode, PutOptions};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let probe =
        object_store::path::Path::from(format!("_sluice_probe/{}-{nanos}", std::process::id()));
    let create = || PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    let unsafe_store = |what: String| {
        format!("the store cannot do create-only writes ({what}); sluice's commits, Kinesis position sidecars and leases need them, so it will not write here")
    };
    store
        .put_opts(&probe, "1".into(), create())
        .await
        .map_err(|e| unsafe_store(format!("a create-only write failed: {e}")))?;
    let second = store.put_opts(&probe, "2".into(), create()).await;
    let _ = store.delete(&probe).await;
    match second {
        Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
        Ok(_) => Err(unsafe_store(
            "a second create of the same object overwrote it".into(),
        )),
        Err(e) => Err(unsafe_store(format!(
            "a second create of the same object failed with {e}, not `already exists`"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream::BoxStream;
    use object_store::memory::InMemory;
    use object_store::path::Path;
    use object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
        PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
    };

    /// A store that ignores create-only: every put overwrites.
    #[derive(Debug, Default)]
    struct Overwriting(InMemory);

    impl std::fmt::Display for Overwriting {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Overwriting")
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for Overwriting {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> Result<PutResult> {
            let opts = PutOptions {
                mode: PutMode::Overwrite,
                ..opts
            };
            self.0.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> Result<Box<dyn MultipartUpload>> {
            self.0.put_multipart_opts(location, opts).await
        }
        async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
            self.0.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: BoxStream<'static, Result<Path>>,
        ) -> BoxStream<'static, Result<Path>> {
            self.0.delete_stream(locations)
        }
        fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
            self.0.list(prefix)
        }
        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
            self.0.list_with_delimiter(prefix).await
        }
        async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
            self.0.copy_opts(from, to, options).await
        }
    }

    #[tokio::test]
    async fn a_store_that_overwrites_is_refused_and_one_that_creates_only_is_not() {
        let store = InMemory::new();
        assert_eq!(create_only(&store).await, Ok(()));
        let refused = create_only(&Overwriting::default()).await.unwrap_err();
        assert!(
            refused.contains("cannot do create-only writes") && refused.contains("overwrote it"),
            "{refused}"
        );
        // The probe cleans up after itself.
        use futures::StreamExt;
        assert_eq!(store.list(None).count().await, 0);
    }
}
