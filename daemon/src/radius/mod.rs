//! The RADIUS front end's pure parts: the packet codec (`packet`: RFC 2865
//! with RFC 3579's Message-Authenticator) and the login dialogue
//! (`dialogue`: what a password asks for, what the user reads, the signed
//! `State`). The UDP listener that runs them is `server::radius`.

pub mod dialogue;
pub mod packet;
