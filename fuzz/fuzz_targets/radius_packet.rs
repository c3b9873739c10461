//! Arbitrary bytes into the RADIUS codec, two ways. As a datagram: nothing
//! panics, and one that decodes and carries a Message-Authenticator valid
//! under the secret reveals a password of at most 128 bytes and takes a
//! reply a client accepts. As the fields of a request a client builds: it
//! decodes, authenticates, gives its password back, and any one byte
//! changed makes it fail authentication. CI runs this target with a small
//! per-allocation limit: nothing may allocate past a packet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slsd::radius::packet::{
    MAX_PACKET, MAX_PASSWORD, MAX_VALUE, Packet, access_request, attribute, code, verify_reply,
};

const SECRET: &[u8] = b"a shared secret for fuzzing";

fuzz_target!(|data: &[u8]| {
    as_datagram(data);
    as_fields(data);
});

fn as_datagram(data: &[u8]) {
    let Ok(packet) = Packet::decode(data) else {
        return;
    };
    assert!(packet.bytes().len() <= MAX_PACKET);
    let _ = packet.attributes().count();
    let Ok(request) = packet.authenticate(SECRET) else {
        return;
    };
    if let Ok(password) = request.password() {
        assert!(password.len() <= MAX_PASSWORD);
    }
    if let Ok(reply) = request.reply(code::ACCESS_CHALLENGE, &[(attribute::STATE, b"state")]) {
        let reply = Packet::decode(&reply).expect("a reply sls encodes decodes");
        assert!(verify_reply(&reply, &packet, SECRET));
        assert!(!verify_reply(&reply, &packet, b"another secret"));
    }
}

fn as_fields(data: &[u8]) {
    let Some((&[identifier, split, flip], rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    let Some((authenticator, rest)) = rest.split_first_chunk::<16>() else {
        return;
    };
    let (password, user) = rest.split_at(usize::from(split).min(MAX_PASSWORD).min(rest.len()));
    let user = &user[..user.len().min(MAX_VALUE)];
    let built = access_request(
        (identifier, *authenticator),
        SECRET,
        Some(password),
        &[(attribute::USER_NAME, user)],
        true,
    )
    .expect("fields within bounds encode");
    let packet = Packet::decode(&built).expect("a built request decodes");
    let request = packet.authenticate(SECRET).expect("a signed request verifies");
    let mut expected = password;
    while let Some((0, head)) = expected.split_last() {
        expected = head;
    }
    assert_eq!(&request.password().unwrap()[..], expected);
    assert_eq!(
        packet.single(attribute::USER_NAME, "User-Name").unwrap(),
        Some(user)
    );
    let mut changed = built.clone();
    let at = usize::from(flip) % changed.len();
    changed[at] ^= 1 << (identifier % 8);
    if let Ok(packet) = Packet::decode(&changed) {
        assert!(packet.authenticate(SECRET).is_err(), "byte {at} changed");
    }
}
