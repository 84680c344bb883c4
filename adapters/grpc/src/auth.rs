//! `AuthService` and `UserService` (auth.proto): signing in, API tokens and users.

use chamberlain_domain::model::{self, ApiTokenId, UserId};
use chamberlain_domain::usecases::NewUser;
use chamberlain_proto::v1::{
    self, auth_service_server::AuthService, user_service_server::UserService,
};
use tonic::{Request, Response, Status};

use crate::convert::{duration, id, opt_ts, page, token_of, ts};
use crate::status::{from_sign_in, from_use_case};
use crate::{Api, caller};

type Reply<T> = Result<Response<T>, Status>;

fn token(t: model::ApiToken) -> v1::ApiToken {
    v1::ApiToken {
        id: t.id.to_string(),
        user_id: t.user_id.to_string(),
        name: t.name.as_str().to_owned(),
        role: t.role_cap.to_string(),
        created_at: Some(ts(t.created_at)),
        expires_at: opt_ts(t.expires_at),
        last_used_at: opt_ts(t.last_used_at),
        revoked_at: opt_ts(t.revoked_at),
    }
}

fn user(u: model::User) -> v1::User {
    v1::User {
        id: u.id.to_string(),
        email: u.email.as_str().to_owned(),
        display_name: u.display_name.as_str().to_owned(),
        role: u.role.to_string(),
        disabled: u.disabled,
        created_at: Some(ts(u.created_at)),
        organization_id: u.organization_id.to_string(),
    }
}

#[tonic::async_trait]
impl AuthService for Api {
    async fn sign_in(&self, request: Request<v1::SignInRequest>) -> Reply<v1::SignInResponse> {
        let r = request.into_inner();
        let issued = self
            .auth
            .sign_in(&r.email, &r.password, Some(&r.organization))
            .await
            .map_err(from_sign_in)?;
        Ok(Response::new(v1::SignInResponse {
            token: issued.secret.expose().to_owned(),
            expires_at: opt_ts(issued.token.expires_at),
        }))
    }

    async fn create_api_token(
        &self,
        request: Request<v1::CreateApiTokenRequest>,
    ) -> Reply<v1::CreateApiTokenResponse> {
        let actor = caller(&request)?;
        let r = request.into_inner();
        let expires_in = duration("expires_in", r.expires_in.as_ref())?;
        let issued = self
            .auth
            .create_token(&actor, &r.name, Some(&r.role), expires_in)
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(v1::CreateApiTokenResponse {
            secret: issued.secret.expose().to_owned(),
            token: Some(token(issued.token)),
        }))
    }

    async fn list_api_tokens(
        &self,
        request: Request<v1::ListApiTokensRequest>,
    ) -> Reply<v1::ListApiTokensResponse> {
        let actor = caller(&request)?;
        let p = page(request.get_ref().page.as_ref(), |t| {
            ApiTokenId::parse(t).ok()
        })?;
        let p = self
            .auth
            .list_tokens(&actor, p)
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(v1::ListApiTokensResponse {
            tokens: p.items.into_iter().map(token).collect(),
            next_page_token: token_of(p.next),
        }))
    }

    async fn revoke_api_token(
        &self,
        request: Request<v1::RevokeApiTokenRequest>,
    ) -> Reply<v1::RevokeApiTokenResponse> {
        let actor = caller(&request)?;
        let tid = id("id", &request.get_ref().id, ApiTokenId::parse)?;
        self.auth
            .revoke_token(&actor, tid)
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(v1::RevokeApiTokenResponse {}))
    }
}

#[tonic::async_trait]
impl UserService for Api {
    async fn who_am_i(&self, request: Request<v1::WhoAmIRequest>) -> Reply<v1::User> {
        let actor = caller(&request)?;
        let u = self.users.who_am_i(&actor).await.map_err(from_use_case)?;
        Ok(Response::new(user(u)))
    }

    async fn create_user(&self, request: Request<v1::CreateUserRequest>) -> Reply<v1::User> {
        let actor = caller(&request)?;
        let r = request.into_inner();
        let u = self
            .users
            .create_user(
                &actor,
                NewUser {
                    email: r.email,
                    display_name: r.display_name,
                    role: r.role,
                    password: Some(r.password),
                },
            )
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(user(u)))
    }

    async fn list_users(
        &self,
        request: Request<v1::ListUsersRequest>,
    ) -> Reply<v1::ListUsersResponse> {
        let actor = caller(&request)?;
        let p = page(request.get_ref().page.as_ref(), |t| UserId::parse(t).ok())?;
        let p = self
            .users
            .list_users(&actor, p)
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(v1::ListUsersResponse {
            users: p.items.into_iter().map(user).collect(),
            next_page_token: token_of(p.next),
        }))
    }

    async fn set_user_role(&self, request: Request<v1::SetUserRoleRequest>) -> Reply<v1::User> {
        let actor = caller(&request)?;
        let r = request.get_ref();
        let uid = id("id", &r.id, UserId::parse)?;
        let u = self
            .users
            .set_role(&actor, uid, &r.role)
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(user(u)))
    }

    async fn delete_user(
        &self,
        request: Request<v1::DeleteUserRequest>,
    ) -> Reply<v1::DeleteUserResponse> {
        let actor = caller(&request)?;
        let uid = id("id", &request.get_ref().id, UserId::parse)?;
        self.users
            .delete_user(&actor, uid)
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(v1::DeleteUserResponse {}))
    }
}
