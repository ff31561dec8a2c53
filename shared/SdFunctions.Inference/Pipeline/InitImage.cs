using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Formats;
using SixLabors.ImageSharp.Formats.Jpeg;
using SixLabors.ImageSharp.Formats.Png;
using SixLabors.ImageSharp.Formats.Webp;
using SixLabors.ImageSharp.PixelFormats;
using SixLabors.ImageSharp.Processing;

namespace SdFunctions.Inference.Pipeline;

/// <summary>
/// The picture image-to-image starts from, as 8-bit RGB (HWC) at the pipeline's compiled size. <see cref="Decode"/> takes PNG,
/// JPEG or WebP; a picture of another size is scaled (Lanczos-3, aspect kept) to cover the compiled size and center-cropped,
/// after its EXIF orientation is applied. Transparency is dropped (the colour under it is kept), as PIL's convert("RGB").
/// </summary>
public sealed record InitImage(byte[] Rgb, int Width, int Height)
{
    /// <summary>The formats accepted, as media types (data URIs, multipart parts).</summary>
    public static readonly IReadOnlyList<string> MediaTypes = ["image/png", "image/jpeg", "image/webp"];

    /// <summary>The largest side a picture may have before it is decoded: bounds the memory a small compressed file can claim.</summary>
    public const int MaxSide = 4096;

    /// <summary>The picture's own size and format before it was fitted (what a job records).</summary>
    public int SourceWidth { get; init; }
    public int SourceHeight { get; init; }
    public string SourceMediaType { get; init; } = "image/png";
    public bool Resized => SourceWidth != Width || SourceHeight != Height;

    // Only the three formats: GIF, BMP, TIFF and others are refused rather than decoded.
    private static readonly Configuration Formats = new(new PngConfigurationModule(), new JpegConfigurationModule(), new WebpConfigurationModule());

    /// <summary>Decodes and fits an encoded picture; what cannot be decoded is an <see cref="InvalidGenerationRequestException"/> for "image".</summary>
    public static InitImage Decode(byte[] encoded, int width, int height)
    {
        IImageInfo? info;
        IImageFormat? format;
        try { info = Image.Identify(Formats, encoded, out format); }
        catch (Exception e) when (IsUnreadable(e)) { throw Unreadable(); }
        if (info is null || format is null) throw Unreadable();
        if (info.Width > MaxSide || info.Height > MaxSide)
            throw new InvalidGenerationRequestException("image", $"The image is {info.Width}×{info.Height}; at most {MaxSide}×{MaxSide} pixels are accepted.");
        try
        {
            using var image = Image.Load<Rgb24>(Formats, encoded);
            image.Mutate(x => x.AutoOrient());
            int sourceWidth = image.Width, sourceHeight = image.Height;
            if (sourceWidth != width || sourceHeight != height)
                image.Mutate(x => x.Resize(new ResizeOptions
                {
                    Size = new Size(width, height), Mode = ResizeMode.Crop, Position = AnchorPositionMode.Center, Sampler = KnownResamplers.Lanczos3,
                }));
            var rgb = new byte[width * height * 3];
            image.CopyPixelDataTo(rgb);
            return new InitImage(rgb, width, height) { SourceWidth = sourceWidth, SourceHeight = sourceHeight, SourceMediaType = format.DefaultMimeType };
        }
        catch (Exception e) when (IsUnreadable(e)) { throw Unreadable(); }
    }

    // Whatever a crafted file makes the decoder throw (a format error, or an InvalidOperationException from an EXIF loop in
    // AutoOrient, an index or argument error from a malformed chunk) is the file's fault; running out of memory is not.
    private static bool IsUnreadable(Exception e) => e is not (OutOfMemoryException or OperationCanceledException or InvalidGenerationRequestException);

    // The decoder's own words ("the C4 marker", "does not contain a data chunk") mean nothing to a client: one sentence of ours.
    private static InvalidGenerationRequestException Unreadable() =>
        new("image", "The image could not be decoded: the file is damaged, cut short or not a PNG, JPEG or WebP picture.");
}
