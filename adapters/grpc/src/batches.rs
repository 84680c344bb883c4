//! `BatchService` (batches.proto).

use chamberlain_domain::model::{self, BatchId, SectionId};
use chamberlain_domain::usecases::NewSection;
use chamberlain_proto::v1::{self, batch_service_server::BatchService};
use tonic::{Request, Response, Status};

use crate::convert::{id, opt_id, opt_ts, page, token_of, ts};
use crate::status::{from_use_case, unknown_parent};
use crate::{Api, caller};

type Reply<T> = Result<Response<T>, Status>;

pub(crate) fn batch(b: model::Batch) -> v1::Batch {
    v1::Batch {
        id: b.id.to_string(),
        section_id: b.section_id.to_string(),
        name: b.name.as_str().to_owned(),
        description: b.description.as_str().to_owned(),
        started_at: Some(ts(b.started_at)),
        ended_at: opt_ts(b.ended_at),
    }
}

#[tonic::async_trait]
impl BatchService for Api {
    async fn start_batch(&self, request: Request<v1::StartBatchRequest>) -> Reply<v1::Batch> {
        let actor = caller(&request)?;
        let r = request.into_inner();
        let sid = id("section_id", &r.section_id, SectionId::parse)?;
        let b = self
            .admin
            .start_batch(
                &actor,
                sid,
                NewSection {
                    name: r.name,
                    description: r.description,
                },
            )
            .await
            .map_err(|e| unknown_parent(e, "section", "section_id"))?;
        Ok(Response::new(batch(b)))
    }

    async fn end_batch(&self, request: Request<v1::EndBatchRequest>) -> Reply<v1::Batch> {
        let actor = caller(&request)?;
        let bid = id("id", &request.get_ref().id, BatchId::parse)?;
        let b = self
            .admin
            .end_batch(&actor, bid)
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(batch(b)))
    }

    async fn list_batches(
        &self,
        request: Request<v1::ListBatchesRequest>,
    ) -> Reply<v1::ListBatchesResponse> {
        let actor = caller(&request)?;
        let r = request.get_ref();
        let sid = opt_id("section_id", &r.section_id, SectionId::parse)?;
        let p = page(r.page.as_ref(), |t| BatchId::parse(t).ok())?;
        let p = self
            .admin
            .list_batches(&actor, sid, p)
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(v1::ListBatchesResponse {
            batches: p.items.into_iter().map(batch).collect(),
            next_page_token: token_of(p.next),
        }))
    }
}
