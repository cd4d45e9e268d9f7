//! What an identity provider (or whoever answers in its place) sends back as JSON: the device
//! authorization answer, a token-endpoint poll, the claims of an ID token mapped to an identity,
//! and a JWKS document with an ID token checked against it. Never a panic; the gateway's bounds
//! on the provider's numbers hold; a poll yields a token only from a successful answer.
//! The first byte picks the case, the rest is the document (case 3: JWKS, a 0xFF byte, the token).
#![no_main]

use std::str::FromStr;
use std::time::Duration;

use jitgate_auth::oidc::{self, AuthError, DeviceAnswer, ExtraClaims, MAX_DEVICE_WAIT, OidcConfig};
use libfuzzer_sys::fuzz_target;
use openidconnect::core::{
    CoreGenderClaim, CoreIdTokenVerifier, CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
};
use openidconnect::{ClientId, ClientSecret, IdToken, IdTokenClaims, IssuerUrl, Nonce};

type IdTok = IdToken<ExtraClaims, CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm>;

fn cfg(identity_claim: &str, allow_unverified_email: bool) -> OidcConfig {
    OidcConfig {
        issuer: "https://idp.example".into(),
        client_id: "jitgate".into(),
        client_secret: Some("secret".into()),
        identity_claim: identity_claim.into(),
        groups_claim: "groups".into(),
        scopes: vec![],
        allow_unverified_email,
        clock_skew: Duration::from_secs(30),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, doc)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(doc) else {
                return;
            };
            if let Ok(a) = DeviceAnswer::parse(&v) {
                assert!((1..=MAX_DEVICE_WAIT).contains(&a.expires_in));
                assert!((1..=60).contains(&a.interval));
                assert_eq!(v.get("device_code").and_then(|x| x.as_str()), Some(a.device_code.as_str()));
            }
        }
        1 => {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(doc) else {
                return;
            };
            let ok = mode & 0x80 != 0;
            match oidc::poll_answer(ok, &v) {
                Ok(t) => assert!(ok && v.get("id_token").and_then(|x| x.as_str()) == Some(t)),
                Err(AuthError::Pending) => assert!(!ok),
                Err(_) => {}
            }
        }
        2 => {
            let Ok(c) = serde_json::from_slice::<IdTokenClaims<ExtraClaims, CoreGenderClaim>>(doc) else {
                return;
            };
            for claim in ["email", "sub", "preferred_username", "upn"] {
                for allow in [false, true] {
                    if let Ok(id) = oidc::identity(&cfg(claim, allow), &c) {
                        assert_eq!(id.subject, c.subject().as_str());
                        if claim == "email" && !allow {
                            assert_eq!(c.email_verified(), Some(true));
                        }
                    }
                }
            }
        }
        _ => {
            let (jwks, token) = match doc.iter().position(|&b| b == 0xff) {
                Some(i) => (&doc[..i], &doc[i + 1..]),
                None => (doc, &b""[..]),
            };
            let Ok(keys) = serde_json::from_slice::<CoreJsonWebKeySet>(jwks) else {
                return;
            };
            let Ok(token) = IdTok::from_str(&String::from_utf8_lossy(token)) else {
                return;
            };
            let Ok(issuer) = IssuerUrl::new("https://idp.example".into()) else {
                return;
            };
            let verifier = CoreIdTokenVerifier::new_confidential_client(
                ClientId::new("jitgate".into()),
                ClientSecret::new("secret".into()),
                issuer,
                keys,
            );
            // Whatever the document, a token is only accepted with a valid signature; none can be
            // forged here, so acceptance would mean the verifier was fooled.
            let accepted = token.claims(&verifier, |_: Option<&Nonce>| Ok(())).is_ok();
            assert!(!accepted, "an ID token the fuzzer made up was accepted");
        }
    }
});
