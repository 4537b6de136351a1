"""Every string the pages show, in Russian (default) and English, in one place."""

from __future__ import annotations

__all__ = ["LANGUAGES", "STRINGS", "strings"]

LANGUAGES = ("ru", "en")

STRINGS: dict[str, dict[str, str]] = {
    "ru": {
        "title": "Видеоконсультация",
        "recordings_title": "Запись приёма",
        "recordings_composed": "Приём целиком",
        "recordings_streams": "Каждый участник",
        "tagline": "Защищённая видеосвязь медицинской информационной системы",
        "start_demo": "Начать тестовую консультацию",
        "demo_hint": "Откройте обе ссылки в разных окнах или на разных устройствах.",
        "demo_patient": "Ссылка пациента",
        "demo_doctor": "Ссылка врача",
        "demo_patient_name": "Пациент (тест)",
        "demo_doctor_name": "Врач (тест)",
        "no_demo": "Ссылку на консультацию вы получите в личном кабинете.",
        "check_title": "Проверка перед приёмом",
        "camera": "Камера",
        "microphone": "Микрофон",
        "mic_level": "Уровень звука микрофона",
        "join": "Подключиться",
        "joining": "Подключение…",
        "waiting": "Ожидаем второго участника…",
        "waiting_doctor": "Вы в приёме. Ожидаем врача…",
        "waiting_patient": "Вы в приёме. Ожидаем пациента…",
        "audio_only": "Камера недоступна, поэтому вы подключитесь только со звуком: врач "
                      "услышит вас и увидит ваше имя. Чтобы включить видео, разрешите "
                      "доступ к камере в настройках браузера и обновите страницу.",
        "failed_no_media_other": "Не удалось установить соединение: видео и звук "
                                 "собеседника ({name}) не доходят из-за его сети. Вам ничего "
                                 "делать не нужно: войдите снова по той же ссылке чуть позже.",
        "failed_no_media_patient": "Не удалось установить соединение: сеть участника {name} "
                                   "не пропускает видео и звук. Ему предложено подключиться "
                                   "через другую сеть (например, мобильную) по той же ссылке.",
        "quality_none": "Видео и звук пока не идут",
        "tile_muted": "Микрофон выключен",
        "tile_camera_off": "Камера выключена",
        "connecting": "Устанавливаем соединение…",
        "live": "Приём идёт",
        "recording": "Идёт запись",
        "mute": "Выключить микрофон",
        "unmute": "Включить микрофон",
        "camera_off": "Выключить камеру",
        "camera_on": "Включить камеру",
        "hangup": "Завершить",
        "end_all": "Завершить приём для всех",
        "you": "Вы",
        "quality": "Качество связи",
        "ended": "Приём завершён. Окно можно закрыть.",
        "failed_no_media": "Не удалось установить соединение: видео и звук не доходят. "
                           "Проверьте подключение к интернету, попробуйте другую сеть "
                           "(например, мобильную) и войдите снова по той же ссылке.",
        "failed_media_server": "Сервер видеосвязи недоступен. Попробуйте подключиться через "
                               "минуту по той же ссылке.",
        "failed_recording": "Не удалось начать запись приёма, поэтому приём не начат. "
                            "Попробуйте позже.",
        "failed_other": "Соединение прервано. Войдите снова по той же ссылке.",
        "err_permission": "Доступ к камере и микрофону запрещён. Разрешите его в настройках "
                          "браузера (значок замка в адресной строке) и обновите страницу.",
        "err_no_device": "Камера или микрофон не найдены. Подключите их и обновите страницу.",
        "err_busy": "Камера или микрофон заняты другой программой. Закройте её и обновите "
                    "страницу.",
        "err_insecure": "Браузер не даёт доступа к камере на этой странице. Откройте ссылку "
                        "в актуальной версии Chrome, Firefox или Safari по адресу https://.",
        "err_token": "Ссылка недействительна или устарела. Запросите новую в личном кабинете.",
        "err_generic": "Произошла ошибка:",
        "reconnecting": "Связь потеряна, переподключаемся…",
        "participant_left": "Собеседник отключился",
        "referral_waiting": "Рабочее место на связи. Ожидаем вызова врача…",
        "ring_incoming": "Вам звонит",
        "accept": "Принять",
        "decline": "Отклонить",
        "ring_call": "Позвонить консультанту",
        "ringing": "Вызываем консультанта…",
        "ring_accepted": "Консультант принял вызов, соединяем…",
        "failed_declined": "Консультант отклонил вызов.",
        "failed_ring_timeout": "Консультант не ответил.",
        "ring_cancelled": "Врач отменил вызов.",
        "declined_by_you": "Вы отклонили вызов.",
        "check_hint": "Убедитесь, что вас видно и слышно. Шкала уровня звука должна "
                      "двигаться, когда вы говорите.",
        "preview": "Изображение с вашей камеры",
        "net_title": "Сеть",
        "net_checking": "проверяем соединение с сервером видеосвязи…",
        "net_relay_ok": "в порядке: видео и звук дойдут даже через защищённую сеть.",
        "net_relay_failed": "ваша сеть не пропускает видеосвязь через сервер. Если видео "
                            "не появится, подключитесь к другой сети (например, мобильной).",
        "net_no_relay_configured": "резервный канал через сервер не настроен; связь будет "
                                   "прямой.",
        "net_unavailable": "не удалось проверить сеть. Проверьте подключение к интернету.",
        "err_unsupported": "Этот браузер не поддерживает видеосвязь. Откройте ссылку в "
                           "актуальной версии Chrome, Firefox, Safari или Яндекс Браузера.",
        "peer_reconnecting": "У собеседника пропала связь, ждём его возвращения…",
        "media_interrupted": "Изображение прервалось",
        "replaced": "Вы подключились к приёму с другого устройства или вкладки. Здесь "
                    "приём завершён.",
        "removed": "Вас отключили от приёма.",
        "token_expiring": "Срок действия ссылки скоро истечёт.",
        "reconnect_failed": "Не удалось восстановить связь. Проверьте подключение к "
                            "интернету и войдите снова по той же ссылке.",
        "failed_turn": "Сервер видеосвязи перегружен. Попробуйте подключиться через "
                       "несколько минут.",
        "failed_shutdown": "Сервер видеосвязи перезапускается. Войдите снова по той же "
                           "ссылке через минуту.",
        "ring_missed": "Вы не ответили на вызов.",
        "ring_answer_within": "Ответьте в течение",
        "consultant_offline": "Консультант сейчас не на связи. Попросите его открыть "
                              "рабочее место.",
        "retry": "Попробовать снова",
        "unit_s": "с",
        "unit_ms": "мс",
        "unit_kbps": "кбит/с",
        "quality_good": "Связь хорошая",
        "quality_fair": "Связь средняя",
        "quality_poor": "Связь плохая",
        "quality_loss": "потери",
        "quality_rtt": "задержка",
        "ws_title": "Рабочее место врача",
        "ws_refused": "Ссылка на рабочее место недействительна или устарела. Откройте его "
                      "заново из медицинской информационной системы.",
        "ws_online": "На связи: вызовы консультаций придут сюда",
        "ws_calls": "Назначенные и идущие приёмы",
        "ws_empty": "Назначенных приёмов нет. Новые появятся здесь сами.",
        "ws_start": "Начать приём",
        "ws_zone": "Часовой пояс",
        "ws_unscheduled": "без записи",
        "ws_unavailable": "Список приёмов сейчас недоступен. Обновите страницу через минуту.",
        "ws_open_live": "Вернуться в приём",
        "ws_open_connecting": "Присоединиться",
        "ws_wait_ring": "Ожидает вызова врача",
        "kind_consultation": "Консультация",
        "kind_referral": "Консультация специалиста",
        "kind_conference": "Конференция",
        "state_created": "Назначен",
        "state_ringing": "Вызов",
        "state_connecting": "Подключение",
        "state_live": "Идёт",
    },
    "en": {
        "title": "Video consultation",
        "recordings_title": "Call recording",
        "recordings_composed": "Whole consultation",
        "recordings_streams": "Each participant",
        "tagline": "Secure video calls for the medical information system",
        "start_demo": "Start a test consultation",
        "demo_hint": "Open both links in separate windows or on separate devices.",
        "demo_patient": "Patient's link",
        "demo_doctor": "Doctor's link",
        "demo_patient_name": "Patient (test)",
        "demo_doctor_name": "Doctor (test)",
        "no_demo": "You will find your consultation link in your personal cabinet.",
        "check_title": "Before the appointment",
        "camera": "Camera",
        "microphone": "Microphone",
        "mic_level": "Microphone level",
        "join": "Join",
        "joining": "Joining…",
        "waiting": "Waiting for the other participant…",
        "waiting_doctor": "You are in the consultation. Waiting for the doctor…",
        "waiting_patient": "You are in the consultation. Waiting for the patient…",
        "audio_only": "No camera is available, so you will join with sound only: the doctor "
                      "will hear you and see your name. To turn video on, allow the camera in "
                      "the browser settings and reload the page.",
        "failed_no_media_other": "The connection could not be established: the other "
                                 "participant's ({name}) network lets no video or sound "
                                 "through. Nothing to do on your side: open the same link "
                                 "again a little later.",
        "failed_no_media_patient": "The connection could not be established: {name}'s "
                                   "network lets no video or sound through. They were asked "
                                   "to try another network (for example mobile data) with "
                                   "the same link.",
        "quality_none": "No video or sound flowing yet",
        "tile_muted": "Microphone off",
        "tile_camera_off": "Camera off",
        "connecting": "Connecting…",
        "live": "In consultation",
        "recording": "Recording",
        "mute": "Mute microphone",
        "unmute": "Unmute microphone",
        "camera_off": "Turn camera off",
        "camera_on": "Turn camera on",
        "hangup": "Hang up",
        "end_all": "End the consultation for everyone",
        "you": "You",
        "quality": "Connection quality",
        "ended": "The consultation has ended. You can close this window.",
        "failed_no_media": "The connection could not be established: no video or sound gets "
                           "through. Check your internet connection, try another network "
                           "(for example mobile data) and open the same link again.",
        "failed_media_server": "The video server is unavailable. Try the same link again in "
                               "a minute.",
        "failed_recording": "The consultation could not be recorded, so it did not start. "
                            "Please try again later.",
        "failed_other": "The connection was interrupted. Open the same link again.",
        "err_permission": "Camera and microphone access is blocked. Allow it in the browser "
                          "settings (the lock icon in the address bar) and reload the page.",
        "err_no_device": "No camera or microphone found. Connect one and reload the page.",
        "err_busy": "The camera or microphone is used by another program. Close it and reload "
                    "the page.",
        "err_insecure": "The browser does not allow the camera on this page. Open the link in "
                        "a current Chrome, Firefox or Safari over https://.",
        "err_token": "This link is invalid or has expired. Ask for a new one in your cabinet.",
        "err_generic": "Something went wrong:",
        "reconnecting": "Connection lost, reconnecting…",
        "participant_left": "The other participant has left",
        "referral_waiting": "Workstation online. Waiting for the doctor's call…",
        "ring_incoming": "Incoming call from",
        "accept": "Accept",
        "decline": "Decline",
        "ring_call": "Call the consultant",
        "ringing": "Calling the consultant…",
        "ring_accepted": "The consultant accepted, connecting…",
        "failed_declined": "The consultant declined the call.",
        "failed_ring_timeout": "The consultant did not answer.",
        "ring_cancelled": "The doctor cancelled the call.",
        "declined_by_you": "You declined the call.",
        "check_hint": "Make sure you can be seen and heard. The sound level bar should move "
                      "when you speak.",
        "preview": "Your camera's picture",
        "net_title": "Network",
        "net_checking": "checking the connection to the video server…",
        "net_relay_ok": "fine: video and sound will get through even a protected network.",
        "net_relay_failed": "your network blocks video calls through our server. If no "
                            "video appears, use another network (for example mobile data).",
        "net_no_relay_configured": "no relay server is set up; the connection will be "
                                   "direct.",
        "net_unavailable": "the network could not be checked. Check your internet "
                           "connection.",
        "err_unsupported": "This browser cannot make video calls. Open the link in a current "
                           "Chrome, Firefox, Safari or Yandex Browser.",
        "peer_reconnecting": "The other participant lost their connection; waiting for them…",
        "media_interrupted": "The picture stopped",
        "replaced": "You joined from another device or tab; the consultation goes on there.",
        "removed": "You were removed from the consultation.",
        "token_expiring": "This link expires soon.",
        "reconnect_failed": "The connection could not be restored. Check your internet "
                            "connection and open the same link again.",
        "failed_turn": "The video server is busy. Try again in a few minutes.",
        "failed_shutdown": "The video server is restarting. Open the same link again in a "
                           "minute.",
        "ring_missed": "You did not answer the call.",
        "ring_answer_within": "Answer within",
        "consultant_offline": "The consultant is not online. Ask them to open their "
                              "workstation.",
        "retry": "Try again",
        "unit_s": "s",
        "unit_ms": "ms",
        "unit_kbps": "kbit/s",
        "quality_good": "Good connection",
        "quality_fair": "Fair connection",
        "quality_poor": "Poor connection",
        "quality_loss": "loss",
        "quality_rtt": "delay",
        "ws_title": "Doctor's workstation",
        "ws_refused": "This workstation link is invalid or has expired. Open the workstation "
                      "again from the medical information system.",
        "ws_online": "Online: consultation calls will ring here",
        "ws_calls": "Scheduled and ongoing appointments",
        "ws_empty": "No appointments scheduled. New ones appear here by themselves.",
        "ws_start": "Start the appointment",
        "ws_zone": "Time zone",
        "ws_unscheduled": "not booked",
        "ws_unavailable": "The appointment list cannot be read just now. Reload in a minute.",
        "ws_open_live": "Back to the appointment",
        "ws_open_connecting": "Join",
        "ws_wait_ring": "Waiting for the doctor's call",
        "kind_consultation": "Consultation",
        "kind_referral": "Referral",
        "kind_conference": "Conference",
        "state_created": "Scheduled",
        "state_ringing": "Ringing",
        "state_connecting": "Connecting",
        "state_live": "In progress",
    },
}


def strings(language: str) -> dict[str, str]:
    return STRINGS.get(language, STRINGS["ru"])
