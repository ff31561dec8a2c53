using System.Text.Json;
using System.Text.Json.Serialization;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Pipeline;
using System.Security.Cryptography;
using System.Text.RegularExpressions;

namespace SdFunctions.Jobs;

/// <summary>The POST /api/generations body, as sent. Unknown fields are rejected.</summary>
[JsonUnmappedMemberHandling(JsonUnmappedMemberHandling.Disallow)]
public sealed record SubmitRequest
{
    public string? Prompt { get; init; }
    public string? NegativePrompt { get; init; }
    public int? Steps { get; init; }
    public double? GuidanceScale { get; init; }
    public long? Seed { get; init; }
    public string? Scheduler { get; init; }
    public string? Decoder { get; init; }
    public bool? TiledDecode { get; init; }
    public int? CacheInterval { get; init; }
    public string? CacheSchedule { get; init; }
    public int? Width { get; init; }
    public int? Height { get; init; }

    /// <summary>Image-to-image: the init picture as a data URI, data:image/png|jpeg|webp;base64,… (or a multipart image part instead).</summary>
    public string? Image { get; init; }

    /// <summary>Image-to-image: 0 &lt; s ≤ 1, default 0.8 (diffusers' StableDiffusionImg2ImgPipeline).</summary>
    public double? Strength { get; init; }

    /// <summary>How many images (1–4), with seeds seed, seed + 1, …; default 1.</summary>
    public int? N { get; init; }

    /// <summary>png (default), webp or jpeg; <see cref="Quality"/> 1–100 for the lossy two (default 90).</summary>
    public string? OutputFormat { get; init; }
    public int? Quality { get; init; }

    public const int MaxImages = 4;

    /// <summary>{url, events?}: POST the job resource to url when it completes (events: completed, started).</summary>
    public Webhooks.WebhookRequest? Webhook { get; init; }

    // Stricter than the API's output settings: numbers must be JSON numbers ("steps": "1" is refused), and a field may
    // appear once (in any letter case: "prompt" and "Prompt" are the same field), so no value silently wins over another.
    private static readonly JsonSerializerOptions ParseOptions = new(JobJson.Options)
    {
        NumberHandling = JsonNumberHandling.Strict, AllowDuplicateProperties = false,
    };

    /// <summary>Parses a body; malformed JSON, a wrong type, a repeated or an unknown field is a 400 problem naming the field.</summary>
    public static SubmitRequest Parse(ReadOnlySpan<byte> body)
    {
        try
        {
            return JsonSerializer.Deserialize<SubmitRequest>(body, ParseOptions)
                ?? throw Invalid(ProblemTypes.MalformedJson, "The body must be a JSON object.", null);
        }
        catch (JsonException e)
        {
            string? field = e.Path is { Length: > 2 } p && p.StartsWith("$.", StringComparison.Ordinal) ? p[2..Math.Min(p.Length, 102)] : null;
            string? problem = e.Message.Contains("could not be mapped", StringComparison.Ordinal) ? "Unknown field."
                : e.Message.Contains("Duplicate", StringComparison.OrdinalIgnoreCase) ? "This field appears more than once."
                : e.Message.StartsWith("The JSON value could not be converted", StringComparison.Ordinal)
                  && e.InnerException is not System.Text.DecoderFallbackException
                  && e.InnerException?.Message.Contains("UTF-8", StringComparison.OrdinalIgnoreCase) != true ? "Wrong type for this field."
                : null; // anything else is the JSON itself being broken (bad syntax, invalid UTF-8), wherever it is
            if (field is not null && problem is not null)
                throw Invalid(ProblemTypes.Validation, "The request has invalid fields.", new Dictionary<string, string[]> { [field] = [problem] });
            if (field is not null)
                throw Invalid(ProblemTypes.MalformedJson, $"The body is not valid JSON (at '{field}').", null);
            throw Invalid(ProblemTypes.MalformedJson, "The body is not valid JSON.", null);
        }
    }

    // What is left of a prompt once control and formatting characters (NUL, escapes, zero-width marks) and blanks are removed.
    private static bool HasVisibleText(string text) =>
        text.Any(c => !char.IsWhiteSpace(c) && char.GetUnicodeCategory(c) is not (System.Globalization.UnicodeCategory.Control
            or System.Globalization.UnicodeCategory.Format));

    /// <summary>
    /// Checks the service's own rules (prompt length, n, output format, webhook, size, the picture) and every generation rule
    /// (<see cref="GenerationRules"/>: against <paramref name="profile"/>, or only the model-free ones without it), reports every
    /// broken one, and chooses a seed when absent. Steps and guidance stay absent when not sent: they take the model's defaults
    /// when the job runs.
    /// </summary>
    /// <param name="upload">The picture of a multipart request (its image part); a JSON request carries it in <see cref="Image"/>.</param>
    /// <param name="webhooks">The service's webhook settings; null = webhooks are not offered.</param>
    /// <param name="profile">The model as this service runs it (<see cref="ModelProfiles"/>).</param>
    public Submission Validate(JobsOptions options, ImageUpload? upload = null, Webhooks.WebhookOptions? webhooks = null, ModelProfile? profile = null)
    {
        var errors = new Dictionary<string, string[]>();
        var (imageBytes, initImage) = ValidateImage(options, upload, errors);
        if (Prompt is null || !HasVisibleText(Prompt)) errors["prompt"] = ["A prompt with visible text is required."];
        else if (Prompt.Length > options.MaxPromptLength) errors["prompt"] = [$"At most {options.MaxPromptLength} characters."];
        if (NegativePrompt is { } n && n.Length > options.MaxPromptLength) errors["negativePrompt"] = [$"At most {options.MaxPromptLength} characters."];
        if (N is < 1 or > MaxImages) errors["n"] = [$"From 1 to {MaxImages} images."];
        else if (N is { } count && Seed is { } first && first + count - 1 > GenerationRequest.MaxSeed)
            errors["seed"] = [$"Image k gets seed + k: with n = {count} the seed may be at most {GenerationRequest.MaxSeed - count + 1}."];
        if (OutputFormat is { } format && !ImageFile.Formats.Contains(format)) errors["outputFormat"] = [$"One of: {string.Join(", ", ImageFile.Formats)}."];
        else if (Quality is { } quality)
        {
            if (!ImageFile.IsLossy(OutputFormat ?? ImageFile.Png)) errors["quality"] = ["A quality is for the lossy formats (webp, jpeg); png is lossless."];
            else if (quality is < ImageFile.MinQuality or > ImageFile.MaxQuality) errors["quality"] = [$"From {ImageFile.MinQuality} to {ImageFile.MaxQuality}."];
        }
        Webhooks.Webhook? webhook = null;
        if (Webhook is { } hook)
        {
            var events = hook.Events ?? [Webhooks.Events.Completed];
            if (webhooks?.SigningSecret is not { Length: > 0 }) errors["webhook"] = ["This service sends no webhooks (it has no signing secret); poll the job instead."];
            else if (hook.Url is null) errors["webhook.url"] = ["A URL is required."];
            else if (Webhooks.OutboundAddress.RefuseUrl(hook.Url, webhooks.AllowHttpLoopback) is { } why) errors["webhook.url"] = [why];
            else if (events.Count == 0 || events.Any(e => !Webhooks.Events.All.Contains(e)) || events.Distinct().Count() != events.Count)
                errors["webhook.events"] = [$"Some of: {string.Join(", ", Webhooks.Events.All)}, each once."];
            else webhook = new Webhooks.Webhook(hook.Url, events);
        }
        if (Width is { } w && w != options.Width) errors["width"] = [$"This service generates {options.Width}×{options.Height} images only."];
        if (Height is { } h && h != options.Height) errors["height"] = [$"This service generates {options.Width}×{options.Height} images only."];
        var generation = new GenerationRequest
        {
            Prompt = Prompt ?? "", NegativePrompt = NegativePrompt ?? "", Steps = Steps, GuidanceScale = GuidanceScale, Seed = Seed,
            Scheduler = Scheduler, Decoder = Decoder, TiledDecode = TiledDecode, CacheInterval = CacheInterval, CacheSchedule = CacheSchedule,
            Width = options.Width, Height = options.Height, InitImage = initImage, Strength = Strength,
        };
        foreach (var (field, message) in GenerationRules.Violations(generation, profile))
            if (!(field == "strength" && errors.ContainsKey("image"))) errors.TryAdd(field, [message]); // a bad picture is said once
        if (errors.Count > 0)
        {
            var problem = Invalid(ProblemTypes.Validation, "The request has invalid fields.", errors).Problem;
            throw new ProblemException(problem with { Allowed = errors.ContainsKey("width") || errors.ContainsKey("height") ? [$"{options.Width}x{options.Height}"] : null });
        }

        var input = new GenerationInput
        {
            Prompt = Prompt!,
            NegativePrompt = NegativePrompt ?? "",
            Steps = Steps,
            GuidanceScale = GuidanceScale,
            Seed = Seed ?? Random.Shared.NextInt64(0, GenerationRequest.MaxSeed - MaxImages + 2), // seed + k stays a valid seed
            Scheduler = Scheduler,
            Decoder = Decoder,
            TiledDecode = TiledDecode,
            CacheInterval = CacheInterval,
            CacheSchedule = CacheSchedule,
            Width = options.Width,
            Height = options.Height,
            Image = initImage is null ? null
                : new InputImage(initImage.SourceMediaType, initImage.SourceWidth, initImage.SourceHeight, imageBytes!.Length, Convert.ToHexStringLower(SHA256.HashData(imageBytes))),
            Strength = initImage is null ? null : Strength ?? GenerationRequest.DefaultStrength,
            N = N ?? 1,
            Webhook = webhook,
            OutputFormat = OutputFormat ?? ImageFile.Png,
            Quality = ImageFile.IsLossy(OutputFormat ?? ImageFile.Png) ? Quality ?? ImageFile.DefaultQuality : null,
        };
        return new Submission(input, imageBytes, initImage);
    }

    /// <summary>The picture from the data URI or the upload, checked by decoding it at the service's size; errors go under "image".</summary>
    private (byte[]? Bytes, InitImage? Image) ValidateImage(JobsOptions options, ImageUpload? upload, Dictionary<string, string[]> errors)
    {
        if (upload is not null && Image is not null)
        {
            errors["image"] = ["Send the image once: as the multipart image part or as a data URI, not both."];
            return (null, null);
        }
        string? declared = upload?.MediaType;
        byte[]? bytes = upload?.Bytes;
        if (Image is { } uri)
        {
            var match = DataUri.Match(uri);
            if (!match.Success)
            {
                errors["image"] = [$"A data URI is expected: data:<{string.Join("|", InitImage.MediaTypes)}>;base64,<data>."];
                return (null, null);
            }
            declared = match.Groups[1].Value.ToLowerInvariant();
            try { bytes = Convert.FromBase64String(match.Groups[2].Value); }
            catch (FormatException) { errors["image"] = ["The data URI's data is not valid base64."]; return (null, null); }
        }
        if (bytes is null) return (null, null);
        if (bytes.Length == 0) { errors["image"] = ["The image is empty."]; return (null, null); }
        if (bytes.Length > options.MaxImageBytes) { errors["image"] = [$"At most {options.MaxImageBytes} bytes; this one has {bytes.Length}."]; return (null, null); }
        try
        {
            var image = InitImage.Decode(bytes, options.Width, options.Height);
            if (declared is not null && declared != "application/octet-stream" && declared != image.SourceMediaType)
            {
                errors["image"] = [$"The image was sent as {declared} but is {image.SourceMediaType}."];
                return (null, null);
            }
            return (bytes, image);
        }
        catch (InvalidGenerationRequestException e)
        {
            errors["image"] = [e.Reason];
            return (null, null);
        }
    }

    // RFC 2397, base64 only, for the three formats the service decodes (media type in any case).
    private static readonly Regex DataUri = new(@"^data:(image/(?:png|jpeg|webp));base64,([A-Za-z0-9+/=\s]*)$",
        RegexOptions.IgnoreCase | RegexOptions.CultureInvariant, TimeSpan.FromSeconds(2));

    private static ProblemException Invalid(string type, string detail, Dictionary<string, string[]>? errors) => new(new Problem
    {
        Type = type, Title = type == ProblemTypes.Validation ? "Invalid request" : "Malformed request", Status = 400, Detail = detail, Errors = errors,
    });
}

/// <summary>The picture of a multipart request: its bytes and the part's declared media type (null when it declared none).</summary>
public sealed record ImageUpload(byte[] Bytes, string? MediaType);

/// <summary>A validated request: what is stored with the job, and the picture (bytes as received, decoded and fitted) for image-to-image.</summary>
public sealed record Submission(GenerationInput Input, byte[]? ImageBytes, InitImage? InitImage);
