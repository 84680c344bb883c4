//! `SectionService` (sections.proto).

use chamberlain_domain::model::{self, SectionId};
use chamberlain_domain::usecases::NewSection;
use chamberlain_proto::v1::{self, section_service_server::SectionService};
use tonic::{Request, Response, Status};

use crate::convert::{id, page, token_of, ts};
use crate::status::from_use_case;
use crate::{Api, caller};

type Reply<T> = Result<Response<T>, Status>;

fn section(s: model::Section) -> v1::Section {
    v1::Section {
        id: s.id.to_string(),
        name: s.name.as_str().to_owned(),
        description: s.description.as_str().to_owned(),
        created_at: Some(ts(s.created_at)),
    }
}

#[tonic::async_trait]
impl SectionService for Api {
    async fn create_section(
        &self,
        request: Request<v1::CreateSectionRequest>,
    ) -> Reply<v1::Section> {
        let actor = caller(&request)?;
        let r = request.into_inner();
        let s = self
            .admin
            .create_section(
                &actor,
                NewSection {
                    name: r.name,
                    description: r.description,
                },
            )
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(section(s)))
    }

    async fn get_section(&self, request: Request<v1::GetSectionRequest>) -> Reply<v1::Section> {
        let actor = caller(&request)?;
        let sid = id("id", &request.get_ref().id, SectionId::parse)?;
        let s = self
            .admin
            .get_section(&actor, sid)
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(section(s)))
    }

    async fn list_sections(
        &self,
        request: Request<v1::ListSectionsRequest>,
    ) -> Reply<v1::ListSectionsResponse> {
        let actor = caller(&request)?;
        let p = page(request.get_ref().page.as_ref(), |t| {
            SectionId::parse(t).ok()
        })?;
        let p = self
            .admin
            .list_sections(&actor, p)
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(v1::ListSectionsResponse {
            sections: p.items.into_iter().map(section).collect(),
            next_page_token: token_of(p.next),
        }))
    }

    async fn update_section(
        &self,
        request: Request<v1::UpdateSectionRequest>,
    ) -> Reply<v1::Section> {
        let actor = caller(&request)?;
        let r = request.into_inner();
        let sid = id("id", &r.id, SectionId::parse)?;
        let current = self
            .admin
            .get_section(&actor, sid)
            .await
            .map_err(from_use_case)?;
        let s = self
            .admin
            .update_section(
                &actor,
                sid,
                NewSection {
                    name: r.name.unwrap_or_else(|| current.name.as_str().to_owned()),
                    description: r
                        .description
                        .unwrap_or_else(|| current.description.as_str().to_owned()),
                },
            )
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(section(s)))
    }

    async fn delete_section(
        &self,
        request: Request<v1::DeleteSectionRequest>,
    ) -> Reply<v1::DeleteSectionResponse> {
        let actor = caller(&request)?;
        let sid = id("id", &request.get_ref().id, SectionId::parse)?;
        self.admin
            .delete_section(&actor, sid)
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(v1::DeleteSectionResponse {}))
    }
}
