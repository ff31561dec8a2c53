using SdFunctions.Inference.Schedulers;
using System.Globalization;
using System.Text;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Formats;
using SixLabors.ImageSharp.Formats.Jpeg;
using SixLabors.ImageSharp.Formats.Png;
using SixLabors.ImageSharp.Formats.Webp;
using SixLabors.ImageSharp.PixelFormats;

namespace SdFunctions.Inference.Pipeline;

/// <summary>
/// Writes generated pixels as a file: PNG (lossless, the default), WebP or JPEG at a quality, with ImageSharp 2.1. A PNG
/// carries the generation parameters in a <c>tEXt</c> chunk named <c>parameters</c>, in the text layout Stable Diffusion
/// tools read (AUTOMATIC1111's "infotext": see <see cref="GenerationParameters"/>).
/// </summary>
public static class ImageFile
{
    public const string Png = "png", Webp = "webp", Jpeg = "jpeg";
    public static readonly IReadOnlyList<string> Formats = [Png, Webp, Jpeg];
    public const int MinQuality = 1, MaxQuality = 100, DefaultQuality = 90;

    public static string ContentType(string format) => format switch
    {
        Png => "image/png", Webp => "image/webp", Jpeg => "image/jpeg",
        _ => throw new ArgumentOutOfRangeException(nameof(format), format, $"one of {string.Join(", ", Formats)}"),
    };

    public static string Extension(string format) => format == Jpeg ? "jpg" : ContentType(format)[6..];

    public static bool IsLossy(string format) => format is Webp or Jpeg;

    /// <summary>Encodes RGB bytes (HWC); <paramref name="quality"/> only for the lossy formats (null = <see cref="DefaultQuality"/>).</summary>
    public static async Task<byte[]> EncodeAsync(byte[] rgb, int width, int height, string format, int? quality = null, string? parameters = null,
        CancellationToken cancellationToken = default)
    {
        using var image = Image.LoadPixelData<Rgb24>(rgb, width, height);
        IImageEncoder encoder;
        if (format == Png)
        {
            if (parameters is not null) image.Metadata.GetPngMetadata().TextData.Add(new PngTextData("parameters", parameters, "", ""));
            // Never compressed into zTXt: tools look for tEXt (or iTXt, which ImageSharp writes for text beyond Latin-1).
            encoder = new PngEncoder { ColorType = PngColorType.Rgb, BitDepth = PngBitDepth.Bit8, TextCompressionThreshold = int.MaxValue };
        }
        else if (format == Jpeg) encoder = new JpegEncoder { Quality = quality ?? DefaultQuality };
        else if (format == Webp) encoder = new WebpEncoder { FileFormat = WebpFileFormatType.Lossy, Quality = quality ?? DefaultQuality };
        else throw new ArgumentOutOfRangeException(nameof(format), format, $"one of {string.Join(", ", Formats)}");
        using var stream = new MemoryStream();
        await image.SaveAsync(stream, encoder, cancellationToken);
        return stream.ToArray();
    }
}

/// <summary>
/// What made an image, as the "parameters" text Stable Diffusion tools read and write (AUTOMATIC1111's infotext): the prompt,
/// a "Negative prompt:" line when there is one, then "Steps: …, Sampler: …, CFG scale: …, Seed: …, Size: WxH, Model: …"
/// (and "Denoising strength: …" for image-to-image).
/// </summary>
public static class GenerationParameters
{
    public static string Format(string prompt, string negativePrompt, GenerationResult result, string model)
    {
        var text = new StringBuilder(prompt);
        if (negativePrompt.Length > 0) text.Append("\nNegative prompt: ").Append(negativePrompt);
        var inv = CultureInfo.InvariantCulture;
        text.Append(inv, $"\nSteps: {result.Steps}, Sampler: {SchedulerCatalog.SamplerName(result.Scheduler)}, CFG scale: {result.GuidanceScale.ToString(inv)}, ")
            .Append(inv, $"Seed: {result.Seed}, Size: {result.Width}x{result.Height}, Model: {model.Replace(",", " ")}");
        if (result.Strength is { } strength) text.Append(inv, $", Denoising strength: {strength.ToString(inv)}");
        return text.ToString();
    }
}
