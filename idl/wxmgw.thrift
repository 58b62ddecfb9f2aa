/*
 * wxmgw: the WeChat mini-program conference media gateway.
 * Structs exactly as in the seed design (field ids, names and types,
 * including StartPullReq.10 `VideoCodec` with a capital V); the service
 * block is the one of MISSION.md section 4.
 */
namespace py wxmgw_thrift
namespace java com.wxmgw.thrift
namespace cpp wxmgw

struct Port {
  1: i32 audio,
  2: i32 video,
}

struct StartPushReq {
  1: string uuid,
  2: string pushUrl,
  3: i32 audioPayloadType,
  4: string audioCodec,
  5: i32 videoPayloadType,
  6: string videoCodec,
  7: string confId,
  8: string reqUuid,
  9: string weixin,
}

struct StartPushResp {
  1: Port port,
  2: i32 code,
  3: string message,
}

struct StopPushReq {
  1: string uuid,
  2: string confId,
}

struct StopPushResp {
  1: i32 code,
  2: string message,
}

struct StartPullReq {
  1: string uuid,
  2: string pullUrl,
  3: i64 ssrc,
  4: string masIp,
  5: i32 audioPort,
  6: i32 videoPort,
  7: i32 audioPayloadType,
  8: string audioCodec,
  9: i32 videoPayloadType,
  10: string VideoCodec,
  11: string pushAudioUrl,
  12: string confId,
}

struct StartPullResp {
  1: i32 code,
  2: string message,
}

struct StopPullReq {
  1: string uuid,
  2: string confId,
}

struct StopPullResp {
  1: i32 code,
  2: string message,
}

struct AvSyncReq {
  1: string uuid,
  2: string confId,
  3: string syncUuid,
}

struct AvSyncResp {
  1: i32 code,
  2: string message,
}

service WxMgw {
  StartPushResp StartPush(1: StartPushReq req),
  StopPushResp  StopPush (1: StopPushReq req),
  StartPullResp StartPull(1: StartPullReq req),
  StopPullResp  StopPull (1: StopPullReq req),
  AvSyncResp    AvSync   (1: AvSyncReq req),
}
